package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Reaper collects the exit status of orphans re-parented to the agent
// without stealing the statuses that libcontainer waits for.
//
// The agent must be a child subreaper (as runc is): libcontainer's
// container processes are grandchildren of the agent (runc init forks and
// exits), and Process.Wait only works once they are re-parented to it. As
// PID 1 the agent also inherits every orphan of the guest. A plain
// wait4(-1) loop would race with libcontainer, which waits on specific pids
// (the runc init stages while starting, the container process afterwards).
// So the reaper reaps selectively:
//
//   - while libcontainer starts a process (Start), which forks and waits for
//     helpers we cannot see, or runs hooks (Hold), reaping is held off (mu
//     held shared);
//   - the pid of every started process is tracked until its own Wait has
//     returned, and tracked pids are never reaped here;
//   - anything else that is a zombie child of the agent is an orphan and is
//     reaped with wait4(pid, WNOHANG).
//
// Zombies are found through /proc/self/task/*/children, which lists the
// agent's children without reaping them (waitid WNOWAIT only shows one).
type Reaper struct {
	// mu is held shared by Start while libcontainer forks and waits, and
	// exclusively while reaping.
	mu sync.RWMutex

	trackMu sync.Mutex       // guards tracked
	tracked map[int]struct{} // pids whose status belongs to a Wait elsewhere

	kick chan struct{} // asks for a reaping pass
}

// NewReaper returns a reaper; call Run to start reaping.
func NewReaper() *Reaper {
	return &Reaper{tracked: map[int]struct{}{}, kick: make(chan struct{}, 1)}
}

// Start runs fn, which starts a process through libcontainer and returns
// its pid, with reaping held off; the pid is tracked until Untrack.
func (r *Reaper) Start(fn func() (int, error)) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pid, err := fn()
	if err == nil {
		r.trackMu.Lock()
		r.tracked[pid] = struct{}{}
		r.trackMu.Unlock()
	}
	return pid, err
}

// Hold runs fn with reaping held off, for libcontainer calls that run and
// wait for their own children (Destroy runs the poststop hooks).
func (r *Reaper) Hold(fn func() error) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return fn()
}

// Untrack hands pid back to the reaper once its Wait has returned.
func (r *Reaper) Untrack(pid int) {
	r.trackMu.Lock()
	delete(r.tracked, pid)
	r.trackMu.Unlock()
	// The pid may already be reused by an orphan that a pass skipped.
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run makes the agent a child subreaper and returns a function that reaps
// orphans on every SIGCHLD until ctx ends. The agent must be a subreaper
// before it starts any container, so Run does that before returning.
func (r *Reaper) Run(ctx context.Context) (loop func(), err error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("become child subreaper: %w", err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	return func() {
		defer signal.Stop(sigs)
		r.loop(ctx, sigs)
	}, nil
}

func (r *Reaper) loop(ctx context.Context, sigs <-chan os.Signal) {
	for {
		r.reap(ctx)
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-r.kick:
		}
	}
}

// reap makes one pass over the agent's zombie children.
func (r *Reaper) reap(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pid := range zombieChildren() {
		r.trackMu.Lock()
		_, tracked := r.tracked[pid]
		r.trackMu.Unlock()
		if tracked {
			continue
		}
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil && !errors.Is(err, unix.ECHILD) {
			log.G(ctx).WithError(err).WithField("pid", pid).Warn("reaping orphan")
		}
		if got == pid {
			log.G(ctx).WithField("pid", pid).WithField("status", exitStatus(ws)).Debug("reaped orphan")
		}
	}
}

// zombieChildren lists the agent's children that have exited.
func zombieChildren() []int {
	files, _ := filepath.Glob("/proc/self/task/*/children")
	var out []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(field)
			if err == nil && isZombie(pid) {
				out = append(out, pid)
			}
		}
	}
	return out
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// exitStatus is the status runc reports: the exit code, or 128+signal for
// a process killed by a signal.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// processExitStatus maps what libcontainer's Process.Wait returned.
func processExitStatus(ps *os.ProcessState) int {
	if ps == nil {
		return 255
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		return exitStatus(unix.WaitStatus(ws))
	}
	return ps.ExitCode()
}
