package qemu

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/internal/procmaps"
)

// TestFreePageReporting boots a guest with its RAM in a shared memfd (as
// the shim's VMs have it, for vhost-user) and the balloon on, whose init
// writes 128 MiB and frees it: the guest's balloon driver must negotiate
// free page reporting (feature bit 5), and QEMU must punch the freed
// pages out of the memfd, so that its resident size falls from its peak
// by at least half of the 128 MiB the guest wrote.
func TestFreePageReporting(t *testing.T) {
	for _, machine := range []string{hypervisor.MachineQ35, hypervisor.MachineMicrovm} {
		t.Run(machine, func(t *testing.T) {
			cfg := bootConfig(t, "vmpod_testinit=alloc")
			cfg.Machine = machine
			cfg.MemoryMiB = 256
			cfg.FreePageReporting = true
			// The memfd a vhost-user device would bring, without one:
			// QEMU merges the second -machine into the first.
			cfg.ExtraArgs = []string{"-machine", "memory-backend=mem",
				"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", cfg.MemoryMiB)}
			q := start(t, cfg)
			// The resident guest RAM is sampled from the start: its peak
			// is the guest's boot plus the 128 MiB it wrote, before the
			// guest reports them free (about 2 s after freeing them).
			var peak int64
			sample := func() int64 {
				t.Helper()
				rss, err := memfdRSS(q.Pid())
				if err != nil {
					t.Fatal(err)
				}
				peak = max(peak, rss)
				return rss
			}
			deadline := time.Now().Add(90 * time.Second)
			var line string
			for line == "" {
				sample()
				for _, l := range strings.Split(q.ConsoleTail(), "\n") {
					if strings.Contains(l, "vmpod-testinit: freed") {
						line = l
					}
				}
				if line != "" {
					break
				}
				select {
				case <-q.Done():
					t.Fatalf("guest exited: %v; console:\n%s", q.Err(), q.ConsoleTail())
				case <-time.After(100 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("guest did not free its memory within 90s; console:\n%s", q.ConsoleTail())
				}
			}
			_, features, _ := strings.Cut(line, "balloon features ")
			features = strings.TrimSpace(features)
			if len(features) < 6 || features[5] != '1' {
				t.Fatalf("free page reporting (bit 5) not negotiated: %q", line)
			}
			const wrote = 128 << 10 // KiB
			if peak < wrote {
				t.Fatalf("guest RAM peaked at %d MiB resident, below the %d MiB the guest wrote", peak>>10, wrote>>10)
			}
			// Most of it must come back; under TCG on a loaded host the
			// guest's 2 s can take longer.
			rss := sample()
			for end := time.Now().Add(60 * time.Second); peak-rss < wrote/2 && time.Now().Before(end); {
				time.Sleep(500 * time.Millisecond)
				rss = sample()
			}
			if peak-rss < wrote/2 {
				t.Errorf("guest RAM (memfd) resident: %d MiB at its peak, still %d MiB 60s after the guest freed the %d MiB it wrote", peak>>10, rss>>10, wrote>>10)
			}
			t.Logf("guest RAM resident: %d MiB at its peak, %d MiB once the guest freed the %d MiB it wrote", peak>>10, rss>>10, wrote>>10)
		})
	}
}

// memfdRSS sums the Rss of pid's memfd mappings (the guest RAM), in KiB.
func memfdRSS(pid int) (int64, error) {
	ms, err := procmaps.Read("/proc", pid, "smaps")
	if err != nil {
		return 0, err
	}
	var kib int64
	found := false
	for _, m := range ms {
		if strings.HasPrefix(m.Path, "/memfd:") {
			kib += m.RssKiB
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("/proc/%d/smaps: no memfd mapping (guest RAM)", pid)
	}
	return kib, nil
}
