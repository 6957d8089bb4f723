package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/hypervisor"
)

func TestDIMMMiB(t *testing.T) {
	for _, tc := range []struct {
		name              string
		need, room, slots int
		want              int
	}{
		{"nothing needed", 0, 3584, 6, 0},
		{"share of the room", 256, 3584, 6, 640},      // ceil(3584/6)=598 → 640
		{"need above the share", 1000, 3584, 6, 1024}, // whole blocks
		{"last slot takes the rest", 128, 1536, 1, 1536},
		{"capped at the room", 900, 768, 3, 768},
		{"room not whole blocks", 100, 200, 6, 128},
		{"no slot left", 128, 1024, 0, 0},
		{"no room", 128, 64, 6, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dimmMiB(tc.need, tc.room, tc.slots); got != tc.want {
				t.Errorf("dimmMiB(%d, %d, %d) = %d, want %d", tc.need, tc.room, tc.slots, got, tc.want)
			}
		})
	}
}

// Whatever the requests, the slots last until the maximum is reached.
func TestDIMMSlotsReachMax(t *testing.T) {
	for _, step := range []int{1, 128, 300, 1000} {
		room, slots := 4096-512, dimmSlots(512)
		for room >= memoryBlockMiB {
			size := dimmMiB(step, room, slots)
			if size == 0 {
				t.Fatalf("requests of %d MiB: stuck with %d MiB room and %d slots", step, room, slots)
			}
			room, slots = room-size, slots-1
		}
	}
}

func TestDIMMSlots(t *testing.T) {
	if got := dimmSlots(512); got != 7 {
		t.Errorf("slots at 512 MiB: %d, want 7", got)
	}
	if got := dimmSlots(4096); got != 6 {
		t.Errorf("slots at 4096 MiB (RAM above 4 GiB too): %d, want 6", got)
	}
}

func TestCommandLineHotplug(t *testing.T) {
	base := hypervisor.Config{ID: "t", Kernel: "/k", Initrd: "/i", StateDir: "/s", VCPUs: 1, MemoryMiB: 512}
	shared := base
	shared.Vsock = &hypervisor.Vsock{VhostUserSocket: "/s/vsock.sock"}
	for _, tc := range []struct {
		name      string
		cfg       hypervisor.Config
		maxVCPUs  int
		maxMemory int
		machine   string
		m, smp    string
	}{
		{"no room", base, 0, 0, "q35", "512M", "1"},
		{"room", base, 2, 4096, "q35", "512M,slots=7,maxmem=4096M", "1,maxcpus=2"},
		{"less than a block of room", base, 1, 600, "q35", "512M", "1"},
		{"room not whole blocks", base, 1, 1000, "q35", "512M,slots=7,maxmem=896M", "1"},
		{"microvm cannot grow", base, 4, 4096, "microvm", "512M", "1"},
		{"shared", shared, 2, 2048, "q35", "512M,slots=7,maxmem=2048M", "1,maxcpus=2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.MaxVCPUs, cfg.MaxMemoryMiB, cfg.Machine = tc.maxVCPUs, tc.maxMemory, tc.machine
			args := commandLine{cfg: cfg.WithDefaults(), accel: "tcg", qmpSocket: "/s/qmp"}.args()
			if got := argAfter(args, "-m"); got != tc.m {
				t.Errorf("-m %q, want %q", got, tc.m)
			}
			if got := argAfter(args, "-smp"); got != tc.smp {
				t.Errorf("-smp %q, want %q", got, tc.smp)
			}
		})
	}
}

func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// fakeExecutor records the commands and answers from a script.
type fakeExecutor struct {
	calls  []string
	args   []any
	answer func(cmd string, args any) (string, error)
}

func (f *fakeExecutor) ExecuteArgs(_ context.Context, cmd string, args any) (json.RawMessage, error) {
	f.calls = append(f.calls, cmd)
	f.args = append(f.args, args)
	r, err := f.answer(cmd, args)
	return json.RawMessage(r), err
}

const twoFreeCPUs = `[
 {"props": {"core-id": 3, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
 {"props": {"core-id": 1, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
 {"props": {"core-id": 2, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
 {"props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]", "type": "qemu64-x86_64-cpu"}]`

func TestGrow(t *testing.T) {
	cfg := hypervisor.Config{ID: "vm1", Machine: "q35", VCPUs: 1, MemoryMiB: 512, MaxVCPUs: 4, MaxMemoryMiB: 4096,
		Vsock: &hypervisor.Vsock{VhostUserSocket: "/x"}}
	ok := func(cmd string, _ any) (string, error) {
		if cmd == "query-hotpluggable-cpus" {
			return twoFreeCPUs, nil
		}
		return `{}`, nil
	}
	for _, tc := range []struct {
		name    string
		want    hypervisor.Resources
		answer  func(string, any) (string, error)
		calls   []string
		got     hypervisor.Resources
		errText string
	}{
		{"nothing to do", hypervisor.Resources{VCPUs: 1, MemoryMiB: 300}, ok, nil, hypervisor.Resources{VCPUs: 1, MemoryMiB: 512}, ""},
		{"two vCPUs", hypervisor.Resources{VCPUs: 3, MemoryMiB: 512}, ok,
			[]string{"query-hotpluggable-cpus", "device_add", "device_add"}, hypervisor.Resources{VCPUs: 3, MemoryMiB: 512}, ""},
		{"capped at max", hypervisor.Resources{VCPUs: 9, MemoryMiB: 512}, ok,
			[]string{"query-hotpluggable-cpus", "device_add", "device_add", "device_add"}, hypervisor.Resources{VCPUs: 4, MemoryMiB: 512}, ""},
		{"memory", hypervisor.Resources{VCPUs: 1, MemoryMiB: 768}, ok,
			[]string{"object-add", "device_add"}, hypervisor.Resources{VCPUs: 1, MemoryMiB: 512 + 512}, ""},
		{"DIMM refused: backend removed", hypervisor.Resources{VCPUs: 1, MemoryMiB: 768}, func(cmd string, a any) (string, error) {
			if cmd == "device_add" {
				return "", errors.New("QMP device_add: GenericError: a used vhost backend has no free memory slots left")
			}
			return ok(cmd, a)
		}, []string{"object-add", "device_add", "object-del"}, hypervisor.Resources{VCPUs: 1, MemoryMiB: 512}, "DIMM dimm1: QMP device_add"},
		{"CPU refused", hypervisor.Resources{VCPUs: 3, MemoryMiB: 768}, func(cmd string, a any) (string, error) {
			if cmd == "device_add" {
				return "", errors.New("boom")
			}
			return ok(cmd, a)
		}, []string{"query-hotpluggable-cpus", "device_add"}, hypervisor.Resources{VCPUs: 1, MemoryMiB: 512}, "qemu vm1: add vCPU vcpu1: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeExecutor{answer: tc.answer}
			got, err := newHotplug(cfg).grow(context.Background(), f, tc.want)
			if tc.errText == "" && err != nil {
				t.Fatal(err)
			}
			if tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)) {
				t.Errorf("error %v, want one containing %q", err, tc.errText)
			}
			if !slices.Equal(f.calls, tc.calls) {
				t.Errorf("commands %v, want %v", f.calls, tc.calls)
			}
			if got != tc.got {
				t.Errorf("resources %+v, want %+v", got, tc.got)
			}
		})
	}
}

func TestGrowCommandArguments(t *testing.T) {
	cfg := hypervisor.Config{ID: "vm1", Machine: "q35", VCPUs: 1, MemoryMiB: 512, MaxVCPUs: 2, MaxMemoryMiB: 1024,
		SharedFS: &hypervisor.SharedFS{Socket: "/fs", Tag: "t"}}
	f := &fakeExecutor{answer: func(cmd string, _ any) (string, error) {
		if cmd == "query-hotpluggable-cpus" {
			return twoFreeCPUs, nil
		}
		return `{}`, nil
	}}
	if _, err := newHotplug(cfg).grow(context.Background(), f, hypervisor.Resources{VCPUs: 2, MemoryMiB: 768}); err != nil {
		t.Fatal(err)
	}
	want := []any{
		nil,
		// The lowest free core first.
		map[string]any{"driver": "qemu64-x86_64-cpu", "id": "vcpu1", "core-id": int64(1), "thread-id": int64(0), "node-id": int64(0), "socket-id": int64(0)},
		// The need (256 MiB) is above the room's share of the 7 slots
		// (74 MiB), and whole blocks.
		map[string]any{"qom-type": "memory-backend-memfd", "id": "dimm2-mem", "size": uint64(256 << 20), "share": true},
		map[string]any{"driver": "pc-dimm", "id": "dimm2", "memdev": "dimm2-mem"},
	}
	if !reflect.DeepEqual(f.args, want) {
		t.Errorf("arguments\n%#v\nwant\n%#v", f.args, want)
	}
	// Not shared: plain RAM.
	if a := memoryBackendArgs("m", 128, false); a["qom-type"] != "memory-backend-ram" || a["share"] != nil {
		t.Errorf("unshared backend %v", a)
	}
}

func TestMicrovmCannotGrow(t *testing.T) {
	cfg := hypervisor.Config{ID: "vm1", Machine: "microvm", VCPUs: 1, MemoryMiB: 512, MaxVCPUs: 4, MaxMemoryMiB: 4096}
	h := newHotplug(cfg)
	f := &fakeExecutor{answer: func(string, any) (string, error) { return `{}`, nil }}
	got, err := h.grow(context.Background(), f, hypervisor.Resources{VCPUs: 4, MemoryMiB: 4096})
	if err != nil || len(f.calls) != 0 || got != (hypervisor.Resources{VCPUs: 1, MemoryMiB: 512}) {
		t.Errorf("microvm grow: %+v, %v, commands %v; want no change", got, err, f.calls)
	}
	if hypervisor.HotplugSupport("microvm") == nil || hypervisor.HotplugSupport("q35") != nil {
		t.Error("HotplugSupport: want microvm refused and q35 allowed")
	}
}
