package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/testbin"
)

// guestImage is the kernel and initrd the shim tests boot, built once per
// test process with the agent of this tree.
var guestImage struct {
	once           sync.Once
	kernel, initrd string
	err            error
}

func buildGuestImage(t *testing.T) (kernel, initrd string) {
	t.Helper()
	agent := testbin.Agent(t)
	guestImage.once.Do(func() {
		dir, err := os.MkdirTemp("", "vmpod-shim-image-")
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

// vmpodEnv is a private containerd with the shim of this tree, the busybox
// image, and a vmpod configuration pointing at a freshly built guest.
type vmpodEnv struct {
	t         *testing.T
	c         *harness.Containerd
	image     string
	stateRoot string
	config    string
}

// configTOML is the test configuration: TCG (no usable KVM here) and the
// test's guest image; extra is appended as is.
func configTOML(kernel, initrd, extra string) string {
	return fmt.Sprintf(`[hypervisor.qemu]
kernel = %q
initrd = %q
accel = "tcg"
[runtime]
debug = true
%s`, kernel, initrd, extra)
}

func skipUnlessVMs(t *testing.T) {
	t.Helper()
	if err := harness.Requirements(); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/usr/lib/qemu/virtiofsd"); err != nil {
		t.Skip("needs /usr/lib/qemu/virtiofsd")
	}
}

func newVMPodEnv(t *testing.T, extraConfig string) *vmpodEnv {
	t.Helper()
	skipUnlessVMs(t)
	kernel, initrd := buildGuestImage(t)
	shimBin := testbin.Build(t, "./cmd/containerd-shim-kata-v2", false)
	dir := t.TempDir()
	stateRoot, err := os.MkdirTemp("", "vmpod-sb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	cfg := filepath.Join(dir, "configuration.toml")
	if err := os.WriteFile(cfg, []byte(configTOML(kernel, initrd, extraConfig)), 0o644); err != nil {
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

// ctr runs ctr with a deadline and fails the test on error.
func (e *vmpodEnv) ctr(args ...string) string {
	e.t.Helper()
	out, _, err := e.ctrErr(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *vmpodEnv) ctrErr(args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return e.c.Ctr(ctx, args...)
}

// run is `ctr run --rm` of the busybox image with the kata runtime.
func (e *vmpodEnv) run(id string, flagsAndArgs ...string) (string, string, error) {
	e.t.Helper()
	var flags, args []string
	for i, a := range flagsAndArgs {
		if a == "--" {
			flags, args = flagsAndArgs[:i], flagsAndArgs[i+1:]
			break
		}
	}
	if flags == nil && args == nil {
		args = flagsAndArgs
	}
	full := append([]string{"run", "--rm", "--runtime", "io.containerd.kata.v2"}, flags...)
	full = append(full, e.image, id)
	return e.ctrErr(append(full, args...)...)
}

func trim(s string) string { return strings.TrimSpace(s) }
