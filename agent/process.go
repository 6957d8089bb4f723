package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

// Process is one process of a container: its init (execID "") or an exec.
// Its phase lives in a processState (created, running, stopped).
type Process struct {
	containerID string
	execID      string
	lc          *libcontainer.Process
	pid         int

	stdin   *inputStream  // nil without stdin
	stdout  *outputStream // a terminal's output goes here only
	stderr  *outputStream // nil for a terminal
	console *os.File      // pty master; nil without a terminal
	// pumpsDone is closed once stdout and stderr reached EOF (or were
	// given up).
	pumpsDone chan struct{}

	exited chan struct{} // closed once the exit status is recorded

	mu       sync.Mutex // guards state, status and exitedAt
	state    processState
	status   int
	exitedAt time.Time
}

// name identifies the process in messages.
func (p *Process) name() string {
	if p.execID == "" {
		return fmt.Sprintf("init process of container %s", p.containerID)
	}
	return fmt.Sprintf("exec %s of container %s", p.execID, p.containerID)
}

// Pid is the process's pid in the agent's pid namespace.
func (p *Process) Pid() int { return p.pid }

// Start lets a created init process run its program.
func (p *Process) Start(c *Container) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state.Start(c)
}

// Signal delivers sig to the process.
func (p *Process) Signal(c *Container, sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state.Signal(c, sig)
}

// Resize sets the terminal size.
func (p *Process) Resize(rows, cols uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state.Resize(rows, cols)
}

// Wait blocks until the process exited or ctx ends.
func (p *Process) Wait(ctx context.Context) (*agentpb.WaitProcessResponse, error) {
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for %s: %w", p.name(), ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &agentpb.WaitProcessResponse{
		ExitStatus:       uint32(p.status),
		ExitedAtUnixNano: p.exitedAt.UnixNano(),
	}, nil
}

// Exited reports whether the exit status is recorded.
func (p *Process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// finished reports whether the process exited and its output streams
// ended, so that nobody needs it any more.
func (p *Process) finished() bool {
	if !p.Exited() {
		return false
	}
	select {
	case <-p.pumpsDone:
		return true
	default:
		return false
	}
}

// waitExit collects the exit status through libcontainer (which owns the
// child), hands the pid back to the reaper and records the exit.
func (p *Process) waitExit(ctx context.Context, r *Reaper) {
	ps, err := p.lc.Wait()
	r.Untrack(p.pid)
	status := processExitStatus(ps)
	if err != nil && ps == nil {
		log.G(ctx).WithError(err).WithField("pid", p.pid).Warn("waiting for process")
	}
	p.mu.Lock()
	p.status = status
	p.exitedAt = time.Now()
	p.state = &stoppedState{p: p}
	p.mu.Unlock()
	close(p.exited)
	log.G(ctx).WithField("pid", p.pid).WithField("status", status).Debugf("%s exited", p.name())
}

// closeIO releases the stdio of a removed process: its stream
// connections close and the pumps stop.
func (p *Process) closeIO() {
	if p.stdin != nil {
		p.stdin.slot.close()
		_ = p.stdin.Close()
	}
	for _, o := range []*outputStream{p.stdout, p.stderr} {
		if o != nil {
			o.slot.close()
			if o.owned {
				_ = o.src.Close()
			}
		}
	}
	if p.console != nil {
		_ = p.console.Close()
	}
}

// processState is one phase of a process, as in containerd's pkg/process.
// Its methods run with the process's lock held.
type processState interface {
	Start(c *Container) error
	Signal(c *Container, sig unix.Signal) error
	Resize(rows, cols uint16) error
}

// createdState: the init process exists and waits for StartContainer.
type createdState struct{ p *Process }

func (s *createdState) Start(c *Container) error {
	// A frozen init never opens the exec fifo, and Exec would wait forever.
	if err := c.checkNotPaused("start"); err != nil {
		return err
	}
	if err := c.lc.Exec(); err != nil {
		return fmt.Errorf("start container %s: %w", c.id, err)
	}
	s.p.state = &runningState{p: s.p}
	return nil
}

func (s *createdState) Signal(c *Container, sig unix.Signal) error {
	return signalProcess(c, s.p, sig)
}

func (s *createdState) Resize(rows, cols uint16) error { return resize(s.p, rows, cols) }

// runningState: the process runs its program.
type runningState struct{ p *Process }

func (s *runningState) Start(*Container) error {
	return fmt.Errorf("%s is already started: %w", s.p.name(), errdefs.ErrFailedPrecondition)
}

func (s *runningState) Signal(c *Container, sig unix.Signal) error {
	return signalProcess(c, s.p, sig)
}

func (s *runningState) Resize(rows, cols uint16) error { return resize(s.p, rows, cols) }

// stoppedState: the process exited and its status is recorded.
type stoppedState struct{ p *Process }

func (s *stoppedState) Start(*Container) error {
	return fmt.Errorf("%s has exited: %w", s.p.name(), errdefs.ErrFailedPrecondition)
}

func (s *stoppedState) Signal(*Container, unix.Signal) error {
	return fmt.Errorf("cannot signal %s: it has exited: %w", s.p.name(), errdefs.ErrFailedPrecondition)
}

func (s *stoppedState) Resize(uint16, uint16) error {
	return fmt.Errorf("cannot resize the terminal of %s: it has exited: %w", s.p.name(), errdefs.ErrFailedPrecondition)
}

// signalProcess signals a live process. The init process goes through the
// container, which also thaws a frozen cgroup for SIGKILL.
func signalProcess(c *Container, p *Process, sig unix.Signal) error {
	var err error
	if p.execID == "" {
		err = c.lc.Signal(sig)
	} else {
		err = p.lc.Signal(sig)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrProcessDone) || errors.Is(err, libcontainer.ErrNotRunning):
		// It exited and waitExit has not recorded it yet.
		return fmt.Errorf("cannot signal %s: it has exited: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("signal %s with %s: %w", p.name(), unix.SignalName(sig), err)
}

func resize(p *Process, rows, cols uint16) error {
	if p.console == nil {
		return fmt.Errorf("%s has no terminal: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	raw, err := p.console.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = raw.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err == nil {
		err = ioErr
	}
	if err != nil {
		return fmt.Errorf("resize terminal of %s: %w", p.name(), err)
	}
	return nil
}
