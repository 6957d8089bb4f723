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
