package vm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kib int64
	var in, found bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 0:
		case !strings.HasSuffix(fields[0], ":"): // a mapping's header
			in = len(fields) >= 6 && files[strings.Join(fields[5:], " ")]
			found = found || in
		case in && fields[0] == "Rss:" && len(fields) == 3:
			n, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: Rss %q: %v", path, fields[1], err)
			}
			kib += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("%s: QEMU maps neither %s nor %s: nothing to check", path, cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd)
	}
	if kib > 1024 {
		t.Errorf("QEMU holds %d KiB of the kernel and initrd after the agent answered, want at most 1 MiB (paged out)", kib)
	}
}
