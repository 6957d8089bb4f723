package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The host's /proc and /sys have the guest's layout.
func TestGuestMetricsFromProc(t *testing.T) {
	r, err := readGuestMetrics(defaultGuestPaths)
	if err != nil {
		t.Fatal(err)
	}
	if r.MemTotalBytes == 0 || r.MemAvailableBytes > r.MemTotalBytes || r.AgentRssBytes == 0 {
		t.Errorf("implausible memory: %+v", r)
	}
	if r.MemOnlineBytes != 0 && r.MemOnlineBytes < r.MemTotalBytes {
		t.Errorf("online memory %d below MemTotal %d", r.MemOnlineBytes, r.MemTotalBytes)
	}
	if r.GetCpu().GetIdleMs()+r.GetCpu().GetUserMs() == 0 {
		t.Errorf("no CPU time: %+v", r.GetCpu())
	}
	found := false
	for _, itf := range r.Interfaces {
		found = found || itf.Name == "lo"
	}
	if !found {
		t.Errorf("no lo among %v", r.Interfaces)
	}
}

// At most MaxMetricInterfaces interfaces are reported, and a missing file
// leaves its fields zero instead of failing the call.
func TestGuestMetricsBounds(t *testing.T) {
	root := t.TempDir()
	proc, net := filepath.Join(root, "proc"), filepath.Join(root, "net")
	for i := 0; i < MaxMetricInterfaces+10; i++ {
		dir := filepath.Join(net, "if"+string(rune('a'+i/26))+string(rune('a'+i%26)), "statistics")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "rx_bytes"), []byte("42\n"), 0o644)
	}
	os.MkdirAll(proc, 0o755)
	os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal:  1024 kB\nMemFree: 512 kB\n"), 0o644)
	mem := filepath.Join(root, "memory")
	for _, b := range []struct{ name, online string }{{"memory0", "1"}, {"memory1", "1"}, {"memory2", "0"}} {
		os.MkdirAll(filepath.Join(mem, b.name), 0o755)
		os.WriteFile(filepath.Join(mem, b.name, "online"), []byte(b.online+"\n"), 0o644)
	}
	os.WriteFile(filepath.Join(mem, "block_size_bytes"), []byte("8000000\n"), 0o644)
	r, err := readGuestMetrics(guestPaths{proc: proc, sysClassNet: net, sysMemory: mem})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != MaxMetricInterfaces || r.Interfaces[0].RxBytes != 42 {
		t.Errorf("%d interfaces (first %v), want %d with rx_bytes 42", len(r.Interfaces), r.Interfaces[0], MaxMetricInterfaces)
	}
	if r.MemOnlineBytes != 2*128<<20 {
		t.Errorf("online memory %d, want two 128 MiB blocks", r.MemOnlineBytes)
	}
	if r.MemTotalBytes != 1<<20 || r.MemFreeBytes != 512<<10 || r.Cpu != nil || r.OomKills != 0 {
		t.Errorf("from partial files: %+v", r)
	}
}
