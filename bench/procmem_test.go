package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in   string
		comm string
		ppid int
		ok   bool
	}{
		{"12 (qemu-system-x86) S 7 12 12 0", "qemu-system-x86", 7, true},
		{"13 (a (b) c) R 1 13", "a (b) c", 1, true},
		{"14 (x) S", "", 0, false},
		{"15 x S 1", "", 0, false},
		{"16 (x) S notanumber", "", 0, false},
	} {
		comm, ppid, ok := parseStat(tc.in)
		if comm != tc.comm || ppid != tc.ppid || ok != tc.ok {
			t.Errorf("parseStat(%q) = %q, %d, %v; want %q, %d, %v", tc.in, comm, ppid, ok, tc.comm, tc.ppid, tc.ok)
		}
	}
}

func TestParseKiB(t *testing.T) {
	rollup := "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1536 kB\nPss_Anon: 1000 kB\n"
	if v, err := parseKiB([]byte(rollup), "Pss", "smaps_rollup"); err != nil || v != 1536 {
		t.Errorf("Pss = %d, %v", v, err)
	}
	for _, bad := range []string{"Pss: 12\n", "Pss: -1 kB\n", "Pss: x kB\n", "Rss: 1 kB\n"} {
		if _, err := parseKiB([]byte(bad), "Pss", "f"); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestPodProcesses builds a fake /proc: a containerd, the start action of
// a shim, the long-lived shim with QEMU and virtiofsd (which forked) below
// it, and another pod's shim.
func TestPodProcesses(t *testing.T) {
	root := t.TempDir()
	addr := "/tmp/ctd/containerd.sock"
	shim := func(id string, extra ...string) []string {
		return append([]string{"/bin/containerd-shim-kata-v2", "-namespace", "ns", "-id", id, "-address", addr}, extra...)
	}
	for _, p := range []struct {
		pid, ppid int
		comm      string
		args      []string
	}{
		{10, 1, "containerd", []string{"containerd"}},
		{20, 10, "containerd-shim", shim("a", "start")},
		{21, 1, "containerd-shim", shim("a")},
		{22, 21, "qemu-system-x86", []string{"qemu-system-x86_64"}},
		{23, 21, "virtiofsd", []string{"virtiofsd"}},
		{24, 23, "virtiofsd", []string{"virtiofsd"}},
		{30, 1, "containerd-shim", shim("b")},
		{31, 30, "qemu-system-x86", []string{"qemu-system-x86_64"}},
	} {
		dir := filepath.Join(root, strconv.Itoa(p.pid))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := strconv.Itoa(p.pid) + " (" + p.comm + ") S " + strconv.Itoa(p.ppid) + " 0 0"
		cmdline := ""
		for _, a := range p.args {
			cmdline += a + "\x00"
		}
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
		os.WriteFile(filepath.Join(dir, "cmdline"), []byte(cmdline), 0o644)
		os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte("Pss: 1024 kB\n"), 0o644)
	}
	procs, err := listProcesses(root)
	if err != nil {
		t.Fatal(err)
	}
	got := podProcesses(procs, addr, "a")
	var pids []int
	for _, p := range got {
		pids = append(pids, p.pid)
	}
	if len(pids) != 4 || pids[0] != 21 {
		t.Fatalf("pod a: pids %v, want the shim 21 first, then 22, 23, 24", pids)
	}
	if v := totalPSS(root, got); v != 4 {
		t.Errorf("total PSS %v MiB, want 4", v)
	}
	if podProcesses(procs, addr, "c") != nil || podProcesses(procs, "/other.sock", "a") != nil {
		t.Error("processes found for a pod that does not exist")
	}
}

func TestCPUSeconds(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "5"), 0o755)
	// utime 150 and stime 50 ticks: 2 s.
	os.WriteFile(filepath.Join(root, "5", "stat"), []byte("5 (a b) S 1 5 5 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 1 0"), 0o644)
	if v, err := cpuSeconds(root, 5); err != nil || v != 2 {
		t.Errorf("cpuSeconds = %v, %v; want 2", v, err)
	}
	os.WriteFile(filepath.Join(root, "5", "stat"), []byte("5 (a) S 1 5"), 0o644)
	if _, err := cpuSeconds(root, 5); err == nil {
		t.Error("short stat parsed")
	}
}
