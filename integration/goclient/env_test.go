package goclient

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

// guestImage is the kernel and initrd the tests boot, built once per test
// process with the agent of this tree (as in package integration).
var guestImage struct {
	once           sync.Once
	kernel, initrd string
	err            error
}

func buildGuestImage(t *testing.T) (kernel, initrd string) {
	t.Helper()
	agent := testbin.Agent(t)
	guestImage.once.Do(func() {
		dir, err := os.MkdirTemp("", "vmpod-goclient-image-")
		if err != nil {
			guestImage.err = err
			return
		}
		res, err := image.BuildInitrd(image.Options{Init: agent, Output: filepath.Join(dir, image.InitrdName)})
		if err != nil {
			guestImage.err = err
			return
		}
		guestImage.initrd = res.Path
		guestImage.kernel, guestImage.err = image.FindKernel(res.KernelRelease)
	})
	if guestImage.err != nil {
		t.Fatalf("guest image: %v", guestImage.err)
	}
	return guestImage.kernel, guestImage.initrd
}

func skipUnlessVMs(t *testing.T) {
	t.Helper()
	if err := harness.Requirements(); err != nil {
		require.Missing(t, err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		require.Missing(t, "needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/usr/lib/qemu/virtiofsd"); err != nil {
		require.Missing(t, "needs /usr/lib/qemu/virtiofsd")
	}
}

// vmpodEnv is a private containerd with the shim of this tree, the busybox
// image, and a vmpod configuration pointing at a freshly built guest.
type vmpodEnv struct {
	t         *testing.T
	c         *harness.Containerd
	image     string // the busybox reference
	stateRoot string // the shim's sandbox state root
	config    string // the vmpod configuration file
}

// newVMPodEnv starts it; extraConfig is appended to the vmpod
// configuration (TOML). When the test ends, nothing may be left.
func newVMPodEnv(t *testing.T, extraConfig string) *vmpodEnv {
	t.Helper()
	skipUnlessVMs(t)
	shimBin := harness.Shim(t)
	kernel, initrd := buildGuestImage(t)
	stateRoot, err := os.MkdirTemp("", "vmpod-sb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	cfg := filepath.Join(t.TempDir(), "configuration.toml")
	toml := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\naccel = \"tcg\"\n[runtime]\ndebug = true\n%s", kernel, initrd, extraConfig)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	c := harness.StartContainerd(t, harness.Options{
		ShimPath:    shimBin,
		VMPODConfig: cfg,
		Env:         []string{"VMPOD_STATE_ROOT=" + stateRoot},
		StateDirs:   []string{stateRoot},
	})
	t.Cleanup(func() { c.AssertClean(t) })
	return &vmpodEnv{t: t, c: c, image: harness.ImportBusybox(t, c), stateRoot: stateRoot, config: cfg}
}

// ctx is a context in the harness's namespace with a deadline.
func (e *vmpodEnv) ctx(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), harness.Namespace), timeout)
}

// isSubsequence reports whether want appears in got in order.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}
