package qemu

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/procmaps"
	"github.com/vmpod/vmpod/internal/require"
)

func TestFileRegions(t *testing.T) {
	maps := `55d0c0000000-55d0c0100000 r--p 00000000 fd:01 1234 /usr/bin/qemu-system-x86_64
7f0000000000-7f0000d00000 r--p 00000000 fd:01 777 /work/out/vmpod-kernel
Size:              13312 kB
Rss:               13312 kB
7f0001000000-7f0001900000 r--p 00000000 103:02 778 /work/out/vmpod initrd.img
7f0002000000-7f0002001000 rw-p 00000000 00:00 0 
7f0003000000-7f0003100000 rw-s 00000000 00:01 777 /memfd:mem (deleted)
7f0004000000-7f0004100000 r--p 00000000 00:2b 779 /btrfs/my initrd
7f0005000000-7f0005100000 r--p 00000000 00:2b 779 /elsewhere/initrd
`
	files := []fileID{{major: 0xfd, minor: 1, inode: 777, path: "/work/out/vmpod-kernel"}, {major: 0x103, minor: 2, inode: 778}, {major: 0x99, inode: 779, path: "/btrfs/my initrd"}}
	got, err := fileRegions([]byte(maps), files, "maps")
	if err != nil {
		t.Fatal(err)
	}
	// The memfd has the kernel's inode number on another device: not it.
	// btrfs shows another device than stat: the path decides.
	want := []region{{0x7f0000000000, 0x7f0000d00000}, {0x7f0001000000, 0x7f0001900000}, {0x7f0004000000, 0x7f0004100000}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("regions = %x, want %x", got, want)
	}
	for _, bad := range []string{
		"7f00-zz r--p 00000000 fd:01 777 /k\n",
		"7f00-7f01 r--p 00000000 fd01 777 /k\n",
		"7f00-7f01 r--p 00000000 fd:01 x /k\n",
		"7f01-7f00 r--p 00000000 fd:01 777 /k\n",
	} {
		if _, err := fileRegions([]byte(bad), files, "maps"); err == nil || !strings.Contains(err.Error(), "maps:1: malformed mapping line") {
			t.Errorf("%q: err = %v, want a malformed mapping line at maps:1", bad, err)
		}
	}
}

// TestReleaseBootFiles boots a vmlinux (PVH entry: QEMU maps the ELF file,
// as it maps the initrd) to an init that sleeps, and checks that
// ReleaseBootFiles takes QEMU's resident pages of both files from what
// loading them left down to almost nothing.
func TestReleaseBootFiles(t *testing.T) {
	cfg := bootConfig(t, "vmpod_testinit=sleep")
	cfg.Kernel = imagetest.Vmlinux(t)
	q := start(t, cfg)
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(q.ConsoleTail(), "vmpod-testinit: sleeping") {
		select {
		case <-q.Done():
			t.Fatalf("guest exited: %v; console:\n%s", q.Err(), q.ConsoleTail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("init did not start within 90s; console:\n%s", q.ConsoleTail())
		}
	}
	var files []fileID
	for _, p := range []string{cfg.Kernel, cfg.Initrd} {
		id, err := statFileID(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, id)
	}
	before := fileRSS(t, q.Pid(), files)
	// The initrd alone is read whole; a booted guest's QEMU holds it.
	st, err := os.Stat(cfg.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	if before < st.Size()>>10/2 {
		t.Fatalf("QEMU holds only %d KiB of kernel and initrd before the release, less than half the %d KiB initrd: nothing to test", before, st.Size()>>10)
	}
	begin := time.Now()
	n, err := q.ReleaseBootFiles()
	if errors.Is(err, unix.ENOSYS) {
		require.Missingf(t, "needs process_madvise (Linux 5.10): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	after := fileRSS(t, q.Pid(), files)
	t.Logf("kernel and initrd resident in QEMU: %d KiB before, %d KiB after advising %d KiB in %v", before, after, n>>10, took)
	if after > 1024 {
		t.Errorf("QEMU still holds %d KiB of kernel and initrd after ReleaseBootFiles (%d KiB before)", after, before)
	}
}

// fileRSS sums the Rss (KiB) of pid's mappings of files.
func fileRSS(t *testing.T, pid int, files []fileID) int64 {
	t.Helper()
	ms, err := procmaps.Read("/proc", pid, "smaps")
	if err != nil {
		t.Fatal(err)
	}
	var kib int64
	for _, m := range ms {
		for _, f := range files {
			if f.matches(m.Major, m.Minor, m.Inode, m.Path) {
				kib += m.RssKiB
				break
			}
		}
	}
	return kib
}
