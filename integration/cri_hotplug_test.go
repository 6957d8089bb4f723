package integration

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCRIHotplug grows a running pod's VM (CPU and memory hot-plug, on by
// default) in one pod, booted at the default 1 vCPU and 512 MiB:
//   - a second container, added later with a 768 MiB memory limit, makes
//     the guest's MemTotal grow by that much, and it can then fill 600 MiB
//     (more than the VM had at boot) without being OOM-killed;
//   - UpdateContainerResources giving the first container one more CPU and
//     256 MiB grows the guest again: nproc and MemTotal.
func TestCRIHotplug(t *testing.T) {
	e := newCRIEnv(t)
	pod, podPath := e.runPod(e.podConfig("hotplug", false))
	small := e.startContainer(pod, podPath, containerConfig("small", 0, []string{"sleep", "100000"}, nil))
	e.waitState(small, "CONTAINER_RUNNING", time.Minute)

	memTotal := func(id string) int {
		t.Helper()
		out := e.must("exec", "-s", id, "grep", "MemTotal", "/proc/meminfo")
		f := strings.Fields(out)
		if len(f) < 2 {
			t.Fatalf("MemTotal of %s: %q", id, out)
		}
		kib, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatal(err)
		}
		return kib >> 10
	}
	nproc := func(id string) int {
		t.Helper()
		n, err := strconv.Atoi(strings.TrimSpace(e.must("exec", "-s", id, "nproc")))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	boot := memTotal(small)
	if boot > 512 || nproc(small) != 1 {
		t.Fatalf("the VM boots with %d MiB and %d vCPUs, want at most 512 and 1", boot, nproc(small))
	}

	big := e.startContainer(pod, podPath, containerConfig("big", 0, []string{"sleep", "100000"}, map[string]any{
		"resources": map[string]any{"memory_limit_in_bytes": 768 << 20},
	}))
	e.waitState(big, "CONTAINER_RUNNING", time.Minute)
	grown := memTotal(big)
	if grown-boot < 700 {
		t.Fatalf("MemTotal %d MiB → %d MiB with a 768 MiB container; want it to grow by about 768", boot, grown)
	}
	// dd holds one 600 MiB buffer, filled from /dev/zero: resident memory
	// the VM did not have at boot.
	if out, err := e.run("", "exec", "-s", big, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=600M count=1 2>&1 && echo allocated"); err != nil || !strings.Contains(out, "allocated") {
		t.Fatalf("allocating 600 MiB in the grown guest: %v: %s", err, out)
	}
	if st := e.inspect("inspect", big); field(st, "status", "state") != "CONTAINER_RUNNING" {
		t.Fatalf("the big container after allocating: %v", field(st, "status"))
	}

	t.Run("update", func(t *testing.T) {
		e := e.at(t)
		e.must("update", "--cpu-period", "100000", "--cpu-quota", "100000", "--memory", strconv.Itoa(256<<20), small)
		// The pod asks for 1 + 1 vCPUs (capped at the host's) and 512 +
		// 768 + 256 MiB.
		if got, want := nproc(small), min(2, runtime.NumCPU()); got != want {
			t.Errorf("nproc after the update: %d, want %d", got, want)
		}
		if after := memTotal(small); after-grown < 250 {
			t.Errorf("MemTotal %d MiB → %d MiB after the update to 256 MiB more; want it to grow by about 256", grown, after)
		}
	})
}
