package pid1

import (
	"os"
	"path/filepath"
	"strings"
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

// SetModuleHelper writes the helper's path only when the kernel names
// another (here a plain file stands in for the sysctl).
func TestSetModuleHelper(t *testing.T) {
	sysctl := filepath.Join(t.TempDir(), "modprobe")
	if err := os.WriteFile(sysctl, []byte("/usr/bin/true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SetModuleHelper(sysctl, "/sbin/modprobe"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(sysctl); string(b) != "/sbin/modprobe" {
		t.Errorf("sysctl holds %q, want /sbin/modprobe", b)
	}
	// Already set (the kernel shows it with a newline): left alone.
	os.WriteFile(sysctl, []byte("/sbin/modprobe\n"), 0o644)
	if err := SetModuleHelper(sysctl, "/sbin/modprobe"); err != nil {
		t.Errorf("helper already set: %v", err)
	}
	if b, _ := os.ReadFile(sysctl); string(b) != "/sbin/modprobe\n" {
		t.Errorf("sysctl rewritten to %q though it named the helper", b)
	}
	if err := SetModuleHelper(filepath.Join(t.TempDir(), "none"), "/sbin/modprobe"); err != nil {
		t.Errorf("kernel without modules: %v", err)
	}
	dir := t.TempDir()
	if err := SetModuleHelper(dir, "/sbin/modprobe"); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("unreadable setting: error %v, want one naming %s", err, dir)
	}
}
