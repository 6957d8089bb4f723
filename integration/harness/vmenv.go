package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

// RequireVMs stops a test that cannot boot VMs here: no root or
// containerd, no QEMU, no virtiofsd (internal/require: a skip on a
// developer machine, a failure in CI).
func RequireVMs(t testing.TB) {
	t.Helper()
	if err := Requirements(); err != nil {
		require.Missing(t, err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		require.Missing(t, "needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/usr/lib/qemu/virtiofsd"); err != nil {
		require.Missing(t, "needs /usr/lib/qemu/virtiofsd")
	}
}

// guestImage is the kernel and initrd the tests boot, built once per test
// process with the agent of this tree.
var guestImage struct {
	once           sync.Once
	kernel, initrd string
	err            error
}

// GuestImage returns the guest kernel and an initrd built (once per test
// process) with the agent of this tree; RunVMTests removes it.
func GuestImage(t testing.TB) (kernel, initrd string) {
	t.Helper()
	agent := testbin.Agent(t)
	guestImage.once.Do(func() {
		dir, err := os.MkdirTemp("", "vmpod-test-image-")
		if err != nil {
			guestImage.err = err
			return
		}
		// The cloud kernel, or $VMPOD_TEST_KERNEL (make test: vmpod's own).
		kernel, modules, err := imagetest.GuestKernel()
		if err != nil {
			guestImage.err = err
			return
		}
		res, err := image.BuildInitrd(image.Options{Init: agent, Output: filepath.Join(dir, image.InitrdName), NoModules: !modules})
		if err != nil {
			guestImage.err = err
			return
		}
		guestImage.initrd = res.Path
		if !modules {
			guestImage.kernel = kernel
			return
		}
		guestImage.kernel, guestImage.err = image.FindKernel(res.KernelRelease)
	})
	if guestImage.err != nil {
		t.Fatalf("guest image: %v", guestImage.err)
	}
	return guestImage.kernel, guestImage.initrd
}

// RunVMTests is the TestMain body of a package whose tests boot VMs: it
// runs them under the VM lock (testbin.RunVMs) and then removes what they
// built once for the whole process, the guest image and the binaries.
func RunVMTests(m *testing.M) int {
	code := testbin.RunVMs(m)
	if guestImage.initrd != "" {
		os.RemoveAll(filepath.Dir(guestImage.initrd))
	}
	return code
}

// VMPODConfig is a vmpod configuration for the tests: TCG (no usable KVM
// here), the given guest image, debug logs; extra is appended as is.
func VMPODConfig(kernel, initrd, extra string) string {
	return VMPODConfigQEMU(kernel, initrd, "", extra)
}

// VMPODConfigQEMU is VMPODConfig with qemuKeys added to its
// [hypervisor.qemu] table (TOML refuses a second one in extra).
func VMPODConfigQEMU(kernel, initrd, qemuKeys, extra string) string {
	return fmt.Sprintf(`[hypervisor.qemu]
kernel = %q
initrd = %q
accel = "tcg"
%s
[runtime]
debug = true
%s`, kernel, initrd, qemuKeys, extra)
}

// PidsWith lists the processes, other than this one, whose command line
// (arguments joined by spaces) holds every one of substrings.
func PidsWith(t testing.TB, substrings ...string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, ent := range ents {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		cmdline := strings.ReplaceAll(string(data), "\x00", " ")
		all := true
		for _, s := range substrings {
			all = all && strings.Contains(cmdline, s)
		}
		if all {
			pids = append(pids, pid)
		}
	}
	return pids
}

// WaitNoProcess waits up to timeout until no process's command line holds
// every one of substrings, and fails the test if some still do.
func WaitNoProcess(t testing.TB, timeout time.Duration, substrings ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pids := PidsWith(t, substrings...)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes %v with %q still run after %s", pids, substrings, timeout)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConfig writes a vmpod configuration for the tests' guest image (with
// extra appended) and makes a sandbox state root of the test's own; both
// go when the test ends.
func TestConfig(t testing.TB, extra string) (cfg, stateRoot string) {
	t.Helper()
	return TestConfigQEMU(t, "", extra)
}

// TestConfigQEMU is TestConfig with qemuKeys in [hypervisor.qemu].
func TestConfigQEMU(t testing.TB, qemuKeys, extra string) (cfg, stateRoot string) {
	t.Helper()
	kernel, initrd := GuestImage(t)
	stateRoot, err := os.MkdirTemp("", "vmpod-sb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	cfg = filepath.Join(t.TempDir(), "configuration.toml")
	if err := os.WriteFile(cfg, []byte(VMPODConfigQEMU(kernel, initrd, qemuKeys, extra)), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg, stateRoot
}

// StartVMPod starts a private containerd whose kata runtime is the shim of
// this tree, with a vmpod configuration (extra appended) and a state root
// of the test's own, and imports busybox. When the test ends, nothing may
// be left (AssertClean).
func StartVMPod(t testing.TB, extra string) (c *Containerd, image, stateRoot, cfg string) {
	t.Helper()
	return StartVMPodQEMU(t, "", extra)
}

// StartVMPodQEMU is StartVMPod with qemuKeys in [hypervisor.qemu].
func StartVMPodQEMU(t testing.TB, qemuKeys, extra string) (c *Containerd, image, stateRoot, cfg string) {
	t.Helper()
	RequireVMs(t)
	shimBin := Shim(t)
	cfg, stateRoot = TestConfigQEMU(t, qemuKeys, extra)
	c = StartContainerd(t, Options{
		ShimPath:    shimBin,
		VMPODConfig: cfg,
		Env:         []string{"VMPOD_STATE_ROOT=" + stateRoot},
		StateDirs:   []string{stateRoot},
	})
	t.Cleanup(func() { c.AssertClean(t) })
	return c, ImportBusybox(t, c), stateRoot, cfg
}
