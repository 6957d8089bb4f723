package clh

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
)

// TestRealBoot boots the test init (image/internal/testinit), which
// powers off, under a real cloud-hypervisor with KVM. It is the only test
// of the driver against CH itself; CI machines have neither.
func TestRealBoot(t *testing.T) {
	path, lookErr := exec.LookPath(DefaultPath)
	host := hypervisor.HostInfo()
	if lookErr != nil || !host.KVMUsable || !host.HWVirt {
		var missing []string
		if lookErr != nil {
			missing = append(missing, "a cloud-hypervisor binary (v40 or later) on PATH")
		}
		if !host.KVMUsable || !host.HWVirt {
			missing = append(missing, "usable KVM (/dev/kvm readable and writable, and the CPU flags showing vmx or svm)")
		}
		require.Missing(t, "a real Cloud Hypervisor boot needs "+strings.Join(missing, " and "))
	}
	imagetest.Require(t)
	state := filepath.Join(t.TempDir(), "state")
	leakcheck.Check(t, leakcheck.Options{Roots: []string{state}})
	cfg := hypervisor.Config{
		ID: "real", Path: path, Kernel: imagetest.Vmlinux(t), Initrd: imagetest.TestInitInitrd(t),
		StateDir: state, Vsock: &hypervisor.Vsock{GuestCID: 3, HybridSocket: filepath.Join(state, "vsock.sock")},
	}
	c := newCLH(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Info(ctx); err != nil || (info.State != StateRunning && info.State != StateShutdown) {
		t.Errorf("vm.info: %+v, %v", info, err)
	}
	select {
	case <-c.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("guest did not power off; console:\n%s\noutput:\n%s", c.ConsoleTail(), c.Stderr())
	}
	if !strings.Contains(c.ConsoleTail(), "vmpod-testinit: powering off") {
		t.Errorf("console does not show the init's output:\n%s", c.ConsoleTail())
	}
}
