package clh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSearchable(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	closed := filepath.Join(dir, "closed")
	os.Mkdir(open, 0o711)
	os.Mkdir(closed, 0o700)
	j := Jail{UID: 1879048192, GID: 1879048192}
	// t.TempDir's directories are 0700; /tmp above them is 1777.
	os.Chmod(filepath.Dir(dir), 0o711)
	os.Chmod(dir, 0o711)
	defer os.Chmod(filepath.Dir(dir), 0o700)
	if err := searchable(open, j); err != nil {
		t.Errorf("0711 directory: %v", err)
	}
	err := searchable(closed, j)
	if err == nil || !strings.Contains(err.Error(), closed+" (mode 0700") || !strings.Contains(err.Error(), "hypervisor.clh.jail = false") {
		t.Errorf("0700 ancestor: %v", err)
	}
	if err := os.Chown(closed, 0, int(j.GID)); err == nil {
		os.Chmod(closed, 0o710)
		if err := searchable(closed, j); err != nil {
			t.Errorf("group-searchable ancestor: %v", err)
		}
	}
}
