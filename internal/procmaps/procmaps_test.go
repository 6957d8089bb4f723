package procmaps

import (
	"fmt"
	"strings"
	"testing"
)

const sample = `55d0a0000000-55d0a0600000 r-xp 00000000 fe:00 123 /usr/bin/qemu-system-x86_64
Size:               6144 kB
Rss:                5120 kB
Pss:                5120 kB
VmFlags: rd ex mr mw me
55d0a2000000-55d0a3200000 rw-p 00000000 00:00 0                          [heap]
Rss:                6144 kB
Pss:                6144 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 77                         /memfd:memory-backend-memfd (deleted)
Size:             262144 kB
Rss:               38000 kB
Pss:               19000 kB
7f0010000000-7f0050000000 rwxp 00000000 00:00 0 
Rss:               32768 kB
Pss:               32768 kB
7f0051000000-7f0051a00000 r--p 00000000 103:02 778 /work/out/vmpod initrd.img
`

func TestParse(t *testing.T) {
	ms, err := Parse([]byte(sample), "smaps")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 5 {
		t.Fatalf("%d mappings, want 5", len(ms))
	}
	if m := ms[0]; m.Path != "/usr/bin/qemu-system-x86_64" || m.Major != 0xfe || m.Minor != 0 || m.Inode != 123 || m.RssKiB != 5120 {
		t.Errorf("binary mapping parsed as %+v", m)
	}
	if m := ms[2]; m.Path != "/memfd:memory-backend-memfd (deleted)" || m.Perms != "rw-s" || m.PssKiB != 19000 || m.RssKiB != 38000 || m.Size() != 256<<20 {
		t.Errorf("memfd mapping parsed as %+v", m)
	}
	if m := ms[3]; m.Path != "" || m.Perms != "rwxp" || m.Inode != 0 {
		t.Errorf("anonymous rwx mapping parsed as %+v", m)
	}
	// maps text (no fields) parses too; a path may hold spaces.
	if m := ms[4]; m.Path != "/work/out/vmpod initrd.img" || m.Major != 0x103 || m.Minor != 2 || m.Inode != 778 || m.RssKiB != 0 {
		t.Errorf("initrd mapping parsed as %+v", m)
	}
}

func TestParseBad(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		line           int
	}{
		{"field first", "Pss: 4 kB\n", "before any mapping", 1},
		{"bad range", "zz-10 rw-p 0 00:00 0\n", "address range", 1},
		{"reversed range", "20-10 rw-p 0 00:00 0\n", "address range", 1},
		{"short header", "10-20 rw-p\n", "malformed mapping line", 1},
		{"bad perms", "10-20 rw 0 00:00 0\n", "permissions", 1},
		{"bad device", "10-20 rw-p 0 0000 0\n", "device", 1},
		{"bad inode", "10-20 rw-p 0 00:00 x\n", "inode", 1},
		{"bad pss", "10-20 rw-p 0 00:00 0\nPss: x kB\n", "malformed Pss value", 2},
		{"negative rss", "10-20 rw-p 0 00:00 0\nRss: -4 kB\n", "malformed Rss value", 2},
		{"no unit", "10-20 rw-p 0 00:00 0\nPss: 4\n", "malformed Pss line", 2},
	} {
		_, err := Parse([]byte(tc.in), "/proc/1/smaps")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), fmt.Sprintf("/proc/1/smaps:%d:", tc.line)) {
			t.Errorf("%s: error %v, want one naming the file and line and containing %q", tc.name, err, tc.want)
		}
	}
}

// FuzzParse: any input parses or fails cleanly, and what parses has
// ranges in order and non-negative sizes.
func FuzzParse(f *testing.F) {
	f.Add(sample)
	f.Add("10-20 rw-p 0 00:00 0 /memfd:x (deleted)\nPss: 4 kB\n")
	f.Add("Pss: 1 kB\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := Parse([]byte(s), "smaps")
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.End < m.Start || m.PssKiB < 0 || m.RssKiB < 0 || len(m.Perms) != 4 {
				t.Fatalf("bad mapping %+v from %q", m, s)
			}
		}
	})
}
