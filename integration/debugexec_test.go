package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/vm"
)

// TestDebugExec runs commands in a pod's guest, outside its container,
// with `vmpod exec` through the debug console ([runtime] debug_console =
// true), in one VM.
func TestDebugExec(t *testing.T) {
	e := newVMPodEnv(t, "debug_console = true\n")
	bin := testbin.Build(t, "./cmd/vmpod", false)
	const id = "debugexec"
	e.runDetached(id, nil, "sleep", "300")
	dir := filepath.Join(e.stateRoot, id)
	fi, err := os.Stat(filepath.Join(dir, "debug.sock"))
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("debug socket: %v, %v: want a socket with mode 0600", fi, err)
	}
	// The guest image holds only the agent: bring a static busybox
	// through the shared directory.
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		require.Missingf(t, "needs a static /bin/busybox (apt-get install busybox-static): %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "shared", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	guestBusybox := vm.GuestSharedDir + "/busybox"
	vmpodExec := func(args ...string) (string, string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"exec", "--state-root", e.stateRoot}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.Exited()) {
			t.Fatalf("vmpod exec %q: %v\n%s", args, err, stderr.String())
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}

	release := imagetest.Release(t)
	out, errOut, code := vmpodExec(id, "--", guestBusybox, "uname", "-r")
	if code != 0 || trim(out) != release {
		t.Errorf("uname -r in the guest: %q (stderr %q), exit %d; want %q, exit 0", out, errOut, code, release)
	}
	// Outside the container: the guest's PID 1 is the agent, which the
	// container cannot see.
	out, errOut, code = vmpodExec(id, "--", guestBusybox, "cat", "/proc/1/cmdline")
	if code != 0 || !strings.HasPrefix(out, "/init") {
		t.Errorf("/proc/1/cmdline in the guest: %q (stderr %q), exit %d; want the agent's /init", out, errOut, code)
	}
	if _, _, code := vmpodExec(id, "--", guestBusybox, "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("sh -c 'exit 7': exit %d, want 7", code)
	}
	if _, errOut, code := vmpodExec(id, "--", "/nonexistent"); code != 1 || !strings.Contains(errOut, "/nonexistent") {
		t.Errorf("/nonexistent: exit %d, stderr %q; want exit 1 naming it", code, errOut)
	}
	if _, errOut, code := vmpodExec("nosuch", "--", "true"); code != 1 || !strings.Contains(errOut, "sandbox nosuch not found") {
		t.Errorf("unknown sandbox: exit %d, stderr %q; want exit 1 naming it", code, errOut)
	}

	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitStatus(id, "STOPPED")
	e.ctr("task", "delete", id)
	e.ctr("containers", "delete", id)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sandbox directory %s left behind: %v", dir, err)
	}
}
