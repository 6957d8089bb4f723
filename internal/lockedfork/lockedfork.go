// Package lockedfork starts child processes that must die with this
// process (a SIGKILL parent-death signal) but not before: the kernel sends
// Pdeathsig when the thread that forked the child ends, not the process,
// and Go ends threads (a goroutine that exits locked to its thread, as
// network.inNamespace does with a thread whose namespace it could not
// restore). Start forks from a thread locked for as long as the child
// runs, so that only the process' death kills it.
package lockedfork

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
)

// Start starts cmd, with SIGKILL as its parent-death signal (other
// SysProcAttr fields are kept), from an OS thread that stays locked until
// cmd exits. The returned channel yields cmd.Wait's result once, when the
// child has exited and been reaped: the caller must not call cmd.Wait.
func Start(cmd *exec.Cmd) (<-chan error, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	waited := make(chan error, 1)
	go func() {
		// Locked for the child's life: this thread is its parent as far
		// as Pdeathsig is concerned, and Go neither reuses it for another
		// goroutine (which could lock it and exit) nor ends it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return waited, nil
}
