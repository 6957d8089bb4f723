package vm

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/vmpod/vmpod/internal/procmaps"
)

// checkBootFilesPagedOut checks that Start had QEMU's mappings of the
// guest kernel and initrd paged out once the agent answered: together
// they are 20 MiB and more resident in a booted QEMU that keeps them.
func checkBootFilesPagedOut(t *testing.T, v *VM, cfg Config) {
	t.Helper()
	files := map[string]bool{}
	for _, p := range []string{cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd} {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			t.Fatal(err)
		}
		files[real] = true
	}
	path := fmt.Sprintf("/proc/%d/smaps", v.Pid())
	ms, err := procmaps.Read("/proc", v.Pid(), "smaps")
	if err != nil {
		t.Fatal(err)
	}
	var kib int64
	found := false
	for _, m := range ms {
		if files[m.Path] {
			kib += m.RssKiB
			found = true
		}
	}
	if !found {
		t.Fatalf("%s: QEMU maps neither %s nor %s: nothing to check", path, cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd)
	}
	if kib > 1024 {
		t.Errorf("QEMU holds %d KiB of the kernel and initrd after the agent answered, want at most 1 MiB (paged out)", kib)
	}
}
