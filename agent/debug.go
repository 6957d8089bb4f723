package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

// Bounds of DebugExec.
const (
	// DebugOutputLimit bounds each of stdout and stderr of a debug command;
	// the rest is dropped and the reply says so.
	DebugOutputLimit = 1 << 20
	// DefaultDebugTimeout is the run time of a debug command that names none.
	DefaultDebugTimeout = 30 * time.Second
	// MaxDebugTimeout bounds the run time a request may ask for.
	MaxDebugTimeout = 10 * time.Minute
	// maxDebugArgs bounds the arguments and the environment entries.
	maxDebugArgs = 256
	// debugWaitDelay bounds the wait for the output pipes once the command
	// is dead: a child it left behind may hold them open.
	debugWaitDelay = 2 * time.Second
)

// errDebugOff is the refusal of a DebugExec the agent was not started for.
var errDebugOff = fmt.Errorf("debug console is off (set [runtime] debug_console = true): %w", errdefs.ErrFailedPrecondition)

// DebugExec runs a command in the guest itself, outside any container, as
// the agent's user (root), and returns its bounded output once it exits or
// its timeout kills it (exit code 137). It is for operators debugging a
// pod and only served when Config.DebugConsole is set.
func (s *Server) DebugExec(ctx context.Context, req *agentpb.DebugExecRequest) (*agentpb.DebugExecResponse, error) {
	if !s.cfg.DebugConsole {
		return nil, errDebugOff
	}
	timeout, err := validateDebugExec(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := req.GetArgs()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), req.GetEnv()...)
	if os.Getenv("PATH") == "" {
		// PID 1 gets no PATH from the kernel.
		cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, cmd.Env...)
	}
	stdout, stderr := &cappedBuffer{limit: DebugOutputLimit}, &cappedBuffer{limit: DebugOutputLimit}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Its own process group, so that the timeout kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := unix.Kill(-cmd.Process.Pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
		return nil
	}
	cmd.WaitDelay = debugWaitDelay

	// Tracked like a container process, so that the reaper leaves its exit
	// status to cmd.Wait.
	pid, err := s.reaper.Start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		return nil, fmt.Errorf("debug exec %q: %w", args[0], err)
	}
	err = cmd.Wait()
	s.reaper.Untrack(pid)
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		return nil, fmt.Errorf("debug exec %q: %w", args[0], err)
	}
	code := processExitStatus(cmd.ProcessState)
	log.G(ctx).WithFields(log.Fields{"args": args, "exit": code}).Info("debug exec")
	return &agentpb.DebugExecResponse{
		Stdout:    stdout.buf.Bytes(),
		Stderr:    stderr.buf.Bytes(),
		ExitCode:  int32(code),
		Truncated: stdout.dropped || stderr.dropped,
	}, nil
}

// validateDebugExec checks a request and returns its timeout.
func validateDebugExec(req *agentpb.DebugExecRequest) (time.Duration, error) {
	args, env := req.GetArgs(), req.GetEnv()
	if len(args) == 0 || args[0] == "" {
		return 0, fmt.Errorf("debug exec: no command: %w", errdefs.ErrInvalidArgument)
	}
	if len(args) > maxDebugArgs || len(env) > maxDebugArgs {
		return 0, fmt.Errorf("debug exec: more than %d arguments or environment entries: %w", maxDebugArgs, errdefs.ErrInvalidArgument)
	}
	for _, a := range args {
		if len(a) > maxStringLen || strings.IndexByte(a, 0) >= 0 {
			return 0, fmt.Errorf("debug exec: argument longer than %d bytes or holding NUL: %w", maxStringLen, errdefs.ErrInvalidArgument)
		}
	}
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" || len(e) > maxStringLen || strings.IndexByte(e, 0) >= 0 {
			return 0, fmt.Errorf("debug exec: environment entry %.64q: want KEY=VALUE of at most %d bytes: %w", e, maxStringLen, errdefs.ErrInvalidArgument)
		}
	}
	ms := req.GetTimeoutMs()
	switch {
	case ms < 0 || time.Duration(ms) > MaxDebugTimeout/time.Millisecond:
		return 0, fmt.Errorf("debug exec: timeout %d ms: want 0 (default %v) to %v: %w", ms, DefaultDebugTimeout, MaxDebugTimeout, errdefs.ErrInvalidArgument)
	case ms == 0:
		return DefaultDebugTimeout, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// cappedBuffer keeps the first limit bytes written to it and drops the
// rest, without failing the writer (which would get SIGPIPE or EPIPE).
type cappedBuffer struct {
	buf     bytes.Buffer
	limit   int
	dropped bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.limit - b.buf.Len(); len(p) > room {
		p = p[:max(room, 0)]
		b.dropped = true
	}
	b.buf.Write(p)
	return n, nil
}
