package shim

import (
	"context"
	"errors"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/sizing"
)

func i64p(v int64) *int64   { return &v }
func u64p(v uint64) *uint64 { return &v }
func cpuRes(quota int64, period uint64) *specs.LinuxResources {
	return &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64p(quota), Period: u64p(period)}}
}
func memRes(limit int64) *specs.LinuxResources {
	return &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64p(limit)}}
}

func TestDemandOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  *specs.LinuxResources
		want sizing.Size
	}{
		{"none", nil, sizing.Size{}},
		{"half a CPU is one vCPU", cpuRes(50000, 100000), sizing.Size{VCPUs: 1}},
		{"1.5 CPUs are two", cpuRes(150000, 100000), sizing.Size{VCPUs: 2}},
		{"unlimited quota", cpuRes(-1, 100000), sizing.Size{}},
		{"zero period", cpuRes(1000, 0), sizing.Size{}},
		{"memory rounds up to MiB", memRes(256<<20 + 1), sizing.Size{MemoryMiB: 257}},
		{"no memory limit", memRes(-1), sizing.Size{}},
		{"both", &specs.LinuxResources{CPU: cpuRes(200000, 100000).CPU, Memory: memRes(1 << 30).Memory}, sizing.Size{VCPUs: 2, MemoryMiB: 1024}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := demandOf(tc.res); got != tc.want {
				t.Errorf("demandOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMergeDemand(t *testing.T) {
	old := sizing.Size{VCPUs: 2, MemoryMiB: 512}
	for _, tc := range []struct {
		name string
		res  *specs.LinuxResources
		want sizing.Size
	}{
		{"memory only keeps the CPUs", memRes(1 << 30), sizing.Size{VCPUs: 2, MemoryMiB: 1024}},
		{"CPU only keeps the memory", cpuRes(300000, 100000), sizing.Size{VCPUs: 3, MemoryMiB: 512}},
		{"unlimited CPU drops the CPUs", cpuRes(-1, 100000), sizing.Size{VCPUs: 0, MemoryMiB: 512}},
		{"nothing", &specs.LinuxResources{}, old},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeDemand(old, tc.res); got != tc.want {
				t.Errorf("mergeDemand = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func res(vcpus, mib int) hypervisor.Resources {
	return hypervisor.Resources{VCPUs: vcpus, MemoryMiB: mib}
}

func TestPodDemandAndGrowTarget(t *testing.T) {
	defaults := sizing.Size{VCPUs: 1, MemoryMiB: 512}
	limit := hypervisor.Resources{VCPUs: 2, MemoryMiB: 4096}
	for _, tc := range []struct {
		name       string
		cur        hypervisor.Resources
		containers []sizing.Size
		want       hypervisor.Resources
		grow       bool
	}{
		{"no containers", res(1, 512), nil, res(1, 512), false},
		{"containers without limits", res(1, 512), []sizing.Size{{}, {}}, res(1, 512), false},
		{"memory", res(1, 512), []sizing.Size{{VCPUs: 0, MemoryMiB: 768}}, res(1, 1280), true},
		{"sum of containers", res(1, 512), []sizing.Size{{VCPUs: 0, MemoryMiB: 256}, {VCPUs: 1, MemoryMiB: 256}}, res(2, 1024), true},
		{"capped at the maximum", res(1, 512), []sizing.Size{{VCPUs: 4, MemoryMiB: 8192}}, res(2, 4096), true},
		// Sized statically for the pod's total (1+1 vCPUs, 512+1024 MiB):
		// containers within it add nothing.
		{"static size covers the pod", res(2, 1536), []sizing.Size{{VCPUs: 1, MemoryMiB: 512}, {VCPUs: 0, MemoryMiB: 512}}, res(2, 1536), false},
		{"never shrinks", res(2, 2048), []sizing.Size{{VCPUs: 0, MemoryMiB: 128}}, res(2, 2048), false},
		{"one dimension grows, the other stays", res(2, 512), []sizing.Size{{VCPUs: 0, MemoryMiB: 256}}, res(2, 768), true},
		{"no room", res(2, 4096), []sizing.Size{{VCPUs: 3, MemoryMiB: 9000}}, res(2, 4096), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, grow := growTarget(tc.cur, limit, podDemand(defaults, tc.containers))
			if got != tc.want || grow != tc.grow {
				t.Errorf("growTarget = %+v, %v; want %+v, %v", got, grow, tc.want, tc.grow)
			}
		})
	}
}

// resizerSandbox is a test double: a sandbox whose VM grows in memory.
type resizerSandbox struct {
	Sandbox
	cur, max hypervisor.Resources
	grows    []hypervisor.Resources
	err      error
}

func (r *resizerSandbox) Resources() (cur, max hypervisor.Resources) { return r.cur, r.max }
func (r *resizerSandbox) Grow(_ context.Context, want hypervisor.Resources) (hypervisor.Resources, error) {
	r.grows = append(r.grows, want)
	if r.err != nil {
		return r.cur, r.err
	}
	r.cur = want
	return r.cur, nil
}

func TestGrowFor(t *testing.T) {
	s := &service{containers: map[string]*container{
		"pause": {id: "pause", podSandbox: true, demand: sizing.Size{VCPUs: 8, MemoryMiB: 8192}}, // left out
		"c1":    {id: "c1", demand: sizing.Size{VCPUs: 1, MemoryMiB: 256}},
	}, defaults: sizing.Size{VCPUs: 1, MemoryMiB: 512}}
	sb := &resizerSandbox{cur: res(1, 512), max: res(4, 4096)}
	// c2 is new: the pod needs 1+1+1 vCPUs and 512+256+512 MiB.
	if err := s.growFor(context.Background(), sb, "c2", sizing.Size{VCPUs: 1, MemoryMiB: 512}); err != nil {
		t.Fatal(err)
	}
	if len(sb.grows) != 1 || sb.grows[0] != (res(3, 1280)) {
		t.Fatalf("grows %+v, want one to 3 vCPUs and 1280 MiB", sb.grows)
	}
	// An update of c1 to less: nothing shrinks, nothing grows.
	if err := s.growFor(context.Background(), sb, "c1", sizing.Size{VCPUs: 0, MemoryMiB: 128}); err != nil || len(sb.grows) != 1 {
		t.Errorf("lower update: %v, grows %+v", err, sb.grows)
	}
	// A failure names the container and what failed.
	sb.err = errors.New("qemu vm: add 512 MiB of memory: DIMM dimm3: boom")
	err := s.growFor(context.Background(), sb, "c3", sizing.Size{VCPUs: 0, MemoryMiB: 2048})
	if err == nil || !strings.Contains(err.Error(), "container c3: grow the pod's VM") || !strings.Contains(err.Error(), "DIMM dimm3: boom") {
		t.Errorf("error %v, want one naming c3 and the DIMM", err)
	}
	// A sandbox that cannot grow is left alone.
	if err := s.growFor(context.Background(), struct{ Sandbox }{}, "c4", sizing.Size{VCPUs: 9, MemoryMiB: 9999}); err != nil {
		t.Errorf("sandbox without hot-plug: %v", err)
	}
}

func TestHotplugAllowed(t *testing.T) {
	for _, tc := range []struct {
		machine, mode string
		want          bool
	}{
		{"q35", config.ResourceBoth, true},
		{"q35", config.ResourceHotplug, true},
		{"q35", config.ResourceStatic, false},
		{"microvm", config.ResourceBoth, false}, // falls back to static, logged
	} {
		cfg := &config.Config{Hypervisor: config.Hypervisor{QEMU: config.QEMU{MachineType: tc.machine}}, Runtime: config.Runtime{ResourceManagement: tc.mode}}
		if got := hotplugAllowed(context.Background(), cfg); got != tc.want {
			t.Errorf("%s, %s: hot-plug %v, want %v", tc.machine, tc.mode, got, tc.want)
		}
	}
}
