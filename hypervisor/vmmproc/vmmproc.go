// Package vmmproc runs a VMM's process for a driver (QEMU, Cloud
// Hypervisor): forked from a thread that lives as long as the process,
// moved into the pod's host cgroup before the guest runs, reaped by one
// goroutine, and with its output kept for error messages.
package vmmproc

import (
	"context"
	"fmt"
	"os/exec"
	"sync/atomic"
	"time"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/internal/lockedfork"
	"github.com/vmpod/vmpod/internal/tail"
)

// Bounds on the waits after a kill and after a failed start.
const (
	killWait       = 10 * time.Second
	startErrorWait = 5 * time.Second
)

// Proc is one VMM process.
type Proc struct {
	name, id string // "qemu", and the VM's id, for messages
	output   *tail.Buffer

	cmd     *exec.Cmd
	waited  <-chan error // cmd.Wait's result (lockedfork)
	pid     atomic.Int64
	done    chan struct{}
	exitErr error // set before done is closed
}

// New returns a process not started yet. name says which VMM it is in
// messages; output keeps the last maxOutput bytes the VMM writes to what
// Output returns (the caller points cmd.Stdout or cmd.Stderr at it).
func New(name, id string, maxOutput int) *Proc {
	return &Proc{name: name, id: id, output: tail.New(maxOutput), done: make(chan struct{})}
}

// Output is the writer for the VMM's output; its last bytes go into
// errors.
func (p *Proc) Output() *tail.Buffer { return p.output }

// Start forks cmd and reaps it in the background; afterExit, if not nil,
// runs once the process is reaped and before Done is closed (to let a
// console reader drain). With cg, the process is moved there before Start
// returns; if that fails it is killed and reaped. The caller serialises
// Start with Kill.
//
// The VMM must not outlive a crashed parent (a SIGKILL parent-death
// signal), nor die with the OS thread that happened to fork it:
// lockedfork forks from a thread that lives as long as the process.
func (p *Proc) Start(cmd *exec.Cmd, cg *hostcgroup.Group, afterExit func()) error {
	waited, err := lockedfork.Start(cmd)
	if err != nil {
		return fmt.Errorf("%s %s: starting %s: %w", p.name, p.id, cmd.Path, err)
	}
	p.cmd, p.waited = cmd, waited
	p.pid.Store(int64(cmd.Process.Pid))
	go p.wait(afterExit)
	if cg != nil {
		if err := cg.Add(cmd.Process.Pid); err != nil {
			p.Kill()
			<-p.done
			return fmt.Errorf("%s %s: %w", p.name, p.id, err)
		}
	}
	return nil
}

func (p *Proc) wait(afterExit func()) {
	err := <-p.waited
	if afterExit != nil {
		afterExit()
	}
	if err != nil {
		err = fmt.Errorf("%s %s (pid %d) exited: %w%s", p.name, p.id, p.cmd.Process.Pid, err, p.outputSuffix())
	}
	p.exitErr = err
	close(p.done)
}

func (p *Proc) outputSuffix() string {
	if s := p.output.String(); s != "" {
		return "; output: " + s
	}
	return ""
}

// Started reports whether Start forked the process.
func (p *Proc) Started() bool { return p.cmd != nil }

// Kill sends SIGKILL; the reaping goroutine does the rest.
func (p *Proc) Kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
	}
}

// StartError describes a failed start: the exit with the VMM's output
// when it exited (waiting briefly for that), else err.
func (p *Proc) StartError(err error) error {
	select {
	case <-p.done:
		if p.exitErr != nil {
			return fmt.Errorf("%s %s: exited during start: %w: %w", p.name, p.id, err, p.exitErr)
		}
		return fmt.Errorf("%s %s: exited during start: %w%s", p.name, p.id, err, p.outputSuffix())
	case <-time.After(startErrorWait):
		return fmt.Errorf("%s %s: %w%s", p.name, p.id, err, p.outputSuffix())
	}
}

// Stop ends the process unless it has exited: quit, the VMM's own way to
// shut down, gets until ctx's deadline (grace when ctx has none) to end
// it; then it is killed, and Stop waits, bounded, until it is reaped.
func (p *Proc) Stop(ctx context.Context, grace time.Duration, quit func(context.Context)) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, grace)
		defer cancel()
	}
	quit(ctx)
	select {
	case <-p.done:
	case <-ctx.Done():
	}
	return p.WaitKilled()
}

// WaitKilled kills the process unless it has exited and waits, bounded,
// until it is reaped.
func (p *Proc) WaitKilled() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("%s %s (pid %d): still running %s after SIGKILL", p.name, p.id, p.cmd.Process.Pid, killWait)
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit error with the VMM's output; nil before exit or for a
// clean exit.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.exitErr
	default:
		return nil
	}
}

// Pid is the process id, 0 before Start.
func (p *Proc) Pid() int { return int(p.pid.Load()) }
