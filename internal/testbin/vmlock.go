package testbin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// VMLockEnv names the file RunVMs locks; unset, VMLockPath.
const VMLockEnv = "VMPOD_VM_TEST_LOCK"

// VMLockPath is the default lock file. It is not /tmp/vmpod-vm.lock, which
// people take by hand around `go test` (flock(1)): the test binary taking
// that one again would wait for itself.
var VMLockPath = filepath.Join(os.TempDir(), "vmpod-vm-tests.lock")

// vmLockWait bounds the wait for the other packages' VMs: longer than any
// package's -timeout in the Makefile, so that a waiter fails only when a
// holder is stuck past its own timeout.
const vmLockWait = 90 * time.Minute

// RunVMs is Run for a package that boots VMs or starts containerd: its
// tests run while no other such package's do (go test runs packages in
// parallel), so that a timeout measures vmpod under TCG on a small
// machine, not which packages overlapped. The wait comes before m.Run,
// outside the package's -timeout. Packages that boot nothing run alongside.
func RunVMs(m *testing.M) int {
	unlock, err := lockVMs(lockPath(), vmLockWait)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testbin:", err)
		return 1
	}
	defer unlock()
	return Run(m)
}

func lockPath() string {
	if p := os.Getenv(VMLockEnv); p != "" {
		return p
	}
	return VMLockPath
}

// lockVMs takes an exclusive flock on path, waiting at most wait. The lock
// goes with the process, however it ends.
func lockVMs(path string, wait time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("VM test lock %s: %w", path, err)
	}
	deadline := time.Now().Add(wait)
	logged := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("VM test lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("VM test lock %s: still held by another test package after %s", path, wait)
		}
		if !logged {
			// go test shows this only with -v or on failure; it says
			// where the time went.
			fmt.Fprintf(os.Stderr, "testbin: waiting for %s (another package is booting VMs)\n", path)
			logged = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}
