package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	agentpb "github.com/vmpod/vmpod/proto"
)

func TestCountCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint32
		bad  bool
	}{
		{"0", 1, false}, {"0-3", 4, false}, {"0-1,3,5-6", 5, false}, {"", 0, false},
		{"3-1", 0, true}, {"x", 0, true}, {"0-", 0, true},
	} {
		got, err := countCPUList(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("countCPUList(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

// fakeSysfs is a guest with cpu0 online, cpu1 offline, two online and one
// offline 128 MiB memory blocks.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("sys/devices/system/cpu/online", "0\n")
	write("sys/devices/system/cpu/cpu1/online", "0\n")
	write("sys/devices/system/memory/block_size_bytes", "8000000\n")
	write("sys/devices/system/memory/memory0/state", "online\n")
	write("sys/devices/system/memory/memory1/state", "online\n")
	write("sys/devices/system/memory/memory32/state", "offline\n")
	write("proc/meminfo", "MemTotal:         400000 kB\nMemFree: 1 kB\n")
	old, oldMem := sysfs, meminfoPath
	sysfs, meminfoPath = filepath.Join(root, "sys"), filepath.Join(root, "proc/meminfo")
	t.Cleanup(func() { sysfs, meminfoPath = old, oldMem })
	return root
}

func TestOnlineCPUMem(t *testing.T) {
	root := fakeSysfs(t)
	s := &Server{}
	// The fake kernel does not update the online list; the agent's
	// writes are what is checked.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	resp, err := s.OnlineCPUMem(ctx, &agentpb.OnlineCPUMemRequest{Vcpus: 2, MemoryMib: 384})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/cpu1/online")); string(b) != "1" {
		t.Errorf("cpu1/online = %q, want the agent's 1", b)
	}
	if resp.Vcpus != 1 {
		t.Errorf("vcpus %d, want 1 (the list the kernel reports)", resp.Vcpus)
	}
	if resp.MemoryMib != 384 || resp.MemTotalKib != 400000 {
		t.Errorf("memory %d MiB, MemTotal %d kB; want 384 and 400000", resp.MemoryMib, resp.MemTotalKib)
	}
}
