package hostcheck

import (
	"strings"
	"testing"
)

// The mount table and containerd's file are read from the host as they
// are: whatever they hold, a check returns a result with a known status.

func FuzzCheckCgroups(f *testing.F) {
	f.Add(mountinfoHybrid)
	f.Add("29 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
	f.Add(" - cgroup\n - - - \n1 2 3 4 5 - cgroup x ,,,=\n")
	f.Fuzz(func(t *testing.T, mountinfo string) {
		r := checkCgroups(mountinfo, nil)
		if r.Status != Pass && r.Status != Warn {
			t.Fatalf("status %q", r.Status)
		}
	})
}

func FuzzContainerdRuntimes(f *testing.F) {
	f.Add("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\n")
	f.Add("version = 3\n[a.b]\nruntime_type = 7\n")
	f.Add("version = \"x\"\nruntime_type = \"io.containerd.kata.v2\"\n[[a]]\n[a.b]\n")
	f.Fuzz(func(t *testing.T, data string) {
		r := containerdRuntimes("/c.toml", []byte(data))
		switch r.Status {
		case Pass:
			if !strings.Contains(r.Reason, "/c.toml") {
				t.Fatalf("pass without the file: %q", r.Reason)
			}
		case Warn:
		default:
			t.Fatalf("status %q", r.Status)
		}
	})
}
