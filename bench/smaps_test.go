package bench

import (
	"math"
	"testing"

	"github.com/vmpod/vmpod/internal/procmaps"
)

const sampleSmaps = `55d0a0000000-55d0a0600000 r-xp 00000000 fe:00 123 /usr/bin/qemu-system-x86_64
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
7f0050000000-7f0051000000 rw-p 00000000 fe:00 5 /out/vmpod-kernel
Rss:               13568 kB
Pss:               13568 kB
7f0051000000-7f0051a00000 r--p 00000000 fe:00 6 /out/vmpod-initrd.img
Rss:                9216 kB
Pss:                4608 kB
7f0052000000-7f0052100000 r--p 00000000 fe:00 7 /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0.7400.6
Rss:                1024 kB
Pss:                 512 kB
7f0053000000-7f0053800000 rw-p 00000000 00:00 0
Rss:                2048 kB
Pss:                2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 100 kB
Pss:                 100 kB
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Rss:                   0 kB
Pss:                   0 kB
`

func TestClassifyQEMU(t *testing.T) {
	ms, err := procmaps.Parse([]byte(sampleSmaps), "smaps")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 10 {
		t.Fatalf("%d mappings, want 10", len(ms))
	}
	got := classifyQEMU(ms, "/usr/bin/qemu-system-x86_64", "/out/vmpod-kernel", "/out/vmpod-initrd.img")
	want := map[string]float64{
		partBinary: 5, partHeap: 6, partGuestRAM: 19000.0 / 1024, partTCG: 32, partKernel: 13.25,
		partInitrd: 4.5, partLibs: 0.5, partAnon: 2 + 100.0/1024, partOther: 0,
	}
	for part, w := range want {
		if math.Abs(got[part]-w) > 1e-9 {
			t.Errorf("%s: %.3f MiB, want %.3f", part, got[part], w)
		}
	}
	var sum float64
	for _, v := range got {
		sum += v
	}
	var total int64
	for _, m := range ms {
		total += m.PssKiB
	}
	if math.Abs(sum-float64(total)/1024) > 1e-9 {
		t.Errorf("parts sum to %.3f MiB, mappings to %.3f", sum, float64(total)/1024)
	}
	if g := guestRAMMiB(ms); math.Abs(g-19000.0/1024) > 1e-9 {
		t.Errorf("guest RAM %.3f MiB", g)
	}
}
