package vm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/testrootfs"
	agentpb "github.com/vmpod/vmpod/proto"
)

// TestHotplug grows a running guest by one vCPU and 256 MiB (a DIMM) and
// checks, in a container started afterwards, that the guest has them, that
// the agent's vsock connection (vmpod's vhost-user backend) survived the new
// memory table, and that virtio-fs (virtiofsd) still serves files. Then it
// grows the guest to its maximum 128 MiB at a time: every DIMM slot is
// used, which QEMU allows only while each vhost-user device has a free
// memory region (bootRegions is right).
func TestHotplug(t *testing.T) {
	imagetest.Require(t)
	cfg, dir := testConfig(t, imagetest.AgentInitrd(t))
	cfg.SharedDir = filepath.Join(dir, "shared")
	cfg.Hypervisor.Kernel = imagetest.Vmlinux(t)
	cfg.Hypervisor.VCPUs, cfg.Hypervisor.MemoryMiB = 1, 512
	// 1024 MiB of room over 7 slots: a DIMM of 256 MiB, then six of 128.
	cfg.Hypervisor.MaxVCPUs, cfg.Hypervisor.MaxMemoryMiB = 2, 1536
	rootfs := filepath.Join(cfg.SharedDir, "c1", "rootfs")
	if err := testrootfs.Busybox(rootfs); err != nil {
		t.Fatal(err)
	}
	v, err := Start(ctxFor(t, 2*time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctxFor(t, 30*time.Second))
	if _, err := v.Agent().CreateSandbox(ctxFor(t, 20*time.Second), &agentpb.CreateSandboxRequest{
		SandboxId: cfg.ID, Mounts: []*agentpb.Mount{v.SharedMount()},
	}); err != nil {
		t.Fatal(err)
	}
	before, err := v.Agent().OnlineCPUMem(ctxFor(t, 10*time.Second), &agentpb.OnlineCPUMemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if before.Vcpus != 1 {
		t.Fatalf("guest boots with %d vCPUs, want 1", before.Vcpus)
	}
	cur, max := v.Resources()
	if want := (hypervisor.Resources{VCPUs: 2, MemoryMiB: 1536}); max != want || cur != (hypervisor.Resources{VCPUs: 1, MemoryMiB: 512}) {
		t.Fatalf("resources %+v, max %+v; want 1/512 and %+v", cur, max, want)
	}

	start := time.Now()
	got, err := v.Grow(ctxFor(t, 2*time.Minute), hypervisor.Resources{VCPUs: 2, MemoryMiB: 768})
	if err != nil {
		t.Fatal(err)
	}
	// Reported, not asserted (docs/performance.md).
	t.Logf("grew by 1 vCPU and 256 MiB, onlined in the guest, in %v", time.Since(start).Round(time.Millisecond))
	if got != (hypervisor.Resources{VCPUs: 2, MemoryMiB: 768}) {
		t.Fatalf("grew to %+v, want 2 vCPUs and 768 MiB", got)
	}

	// Written after the hot-add: read through virtio-fs below.
	if err := os.WriteFile(filepath.Join(rootfs, "marker"), []byte("after hot-plug\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runContainer(t, v, "c1", "sh", "-c", "nproc; grep MemTotal /proc/meminfo; cat /marker")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("container: exit %d, output %q", code, out)
	}
	if lines[0] != "2" {
		t.Errorf("nproc in the guest: %q, want 2", lines[0])
	}
	f := strings.Fields(lines[1])
	if len(f) < 2 {
		t.Fatalf("MemTotal line %q", lines[1])
	}
	kib, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	// The whole DIMM shows, less the kernel's memmap for it (2 MiB).
	if grew := (kib - before.MemTotalKib) >> 10; kib < before.MemTotalKib || grew < 250 {
		t.Errorf("MemTotal grew by %d MiB (%d → %d KiB), want about 256", grew, before.MemTotalKib, kib)
	}
	if lines[2] != "after hot-plug" {
		t.Errorf("file read through virtio-fs after the hot-add: %q", lines[2])
	}

	for want := 768 + 128; want <= 1536; want += 128 {
		start := time.Now()
		got, err := v.Grow(ctxFor(t, time.Minute), hypervisor.Resources{VCPUs: 2, MemoryMiB: want})
		t.Logf("grew by 128 MiB to %d MiB in %v", want, time.Since(start).Round(time.Millisecond))
		if err != nil {
			t.Fatalf("grow to %d MiB: %v", want, err)
		}
		if got.MemoryMiB != want {
			t.Fatalf("grew to %d MiB, want %d", got.MemoryMiB, want)
		}
	}
	resp, err := v.Agent().OnlineCPUMem(ctxFor(t, 10*time.Second), &agentpb.OnlineCPUMemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.MemoryMib != 1536 {
		t.Errorf("guest has %d MiB online at the maximum, want 1536", resp.MemoryMib)
	}
}
