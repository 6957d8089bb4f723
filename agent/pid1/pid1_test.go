package pid1

import (
	"os"
	"path/filepath"
	"testing"
)

// EnableControllers writes every available controller, with a "+", into
// cgroup.subtree_control (here plain files standing in for cgroupfs).
func TestEnableControllers(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := EnableControllers(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "+cpuset +cpu +io +memory +pids"; string(b) != want {
		t.Errorf("wrote %q, want %q", b, want)
	}
}

func TestEnableControllersNone(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := EnableControllers(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.subtree_control")); err == nil {
		t.Error("wrote subtree_control with nothing to enable")
	}
	if err := EnableControllers(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing cgroup root is not an error")
	}
}

func TestRootFSType(t *testing.T) {
	initramfs := "1 1 0:2 / / rw - rootfs rootfs rw,size=250000k\n22 1 0:20 / /proc rw,relatime - proc proc rw\n"
	if got := rootFSType(initramfs); got != "rootfs" {
		t.Errorf("initramfs root: %q", got)
	}
	disk := "21 26 0:20 / /proc rw - proc proc rw\n26 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
	if got := rootFSType(disk); got != "ext4" {
		t.Errorf("disk root: %q", got)
	}
}
