package lockedfork

import (
	"errors"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// The main goroutine keeps the main thread, which Go never ends (a locked
// goroutine exiting there wedges the thread instead): the tests' goroutines
// run on threads that do end.
func init() { runtime.LockOSThread() }

// onThreadThatExits runs fn on a fresh OS thread that ends when fn
// returns: a goroutine that exits locked takes its thread with it.
func onThreadThatExits(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with us
		fn()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the starting goroutine did not return")
	}
}

func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	path, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("needs sleep (coreutils): %v", err)
	}
	return exec.Command(path, "60")
}

// alive reports whether pid exists and is not a zombie we have not reaped.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestPlainStartDiesWithThread is the hazard Start avoids: a child forked
// with Pdeathsig from a thread that ends is killed with it.
func TestPlainStartDiesWithThread(t *testing.T) {
	cmd := sleeper(t)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	onThreadThatExits(t, func() {
		if err := cmd.Start(); err != nil {
			t.Error(err)
		}
	})
	if cmd.Process == nil {
		t.FailNow()
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("child ended with %v, want SIGKILL", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-waited
		t.Fatal("the child outlived the thread that forked it with Pdeathsig: this test shows nothing here")
	}
}

// TestStartOutlivesCallerThread: the thread that called Start ends, the
// child keeps running; it is reaped through the channel Start returned.
func TestStartOutlivesCallerThread(t *testing.T) {
	cmd := sleeper(t)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var waited <-chan error
	onThreadThatExits(t, func() {
		var err error
		if waited, err = Start(cmd); err != nil {
			t.Error(err)
		}
	})
	if waited == nil {
		t.FailNow()
	}
	if !cmd.SysProcAttr.Setpgid || cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Errorf("SysProcAttr %+v: want Setpgid kept and Pdeathsig SIGKILL", cmd.SysProcAttr)
	}
	select {
	case err := <-waited:
		t.Fatalf("the child died with the thread that called Start: %v", err)
	case <-time.After(2 * time.Second):
	}
	if !alive(cmd.Process.Pid) {
		t.Fatal("child gone")
	}
	cmd.Process.Kill()
	select {
	case err := <-waited:
		if err == nil {
			t.Error("a killed child exited 0")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killed child was not reaped")
	}
}

func TestStartError(t *testing.T) {
	if _, err := Start(exec.Command("/nonexistent/vmpod-child")); err == nil {
		t.Fatal("started a missing binary")
	}
}
