package shim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/vmpod/vmpod/config"
	agentpb "github.com/vmpod/vmpod/proto"
)

// The shim learns that its sandbox is dead in two ways. QEMU is the shim's
// child, so its exit closes Sandbox.Done as soon as the wait returns: no
// polling. A guest that hangs (agent stuck, kernel panicked, vCPUs stopped)
// leaves QEMU running; the agent must then answer a periodic Check within a
// deadline. Either way the shim stops the sandbox: the agent connection
// closes, every pending WaitProcess fails, and each process still running
// is reported exited with status 255 (exitStatusLost), as containerd
// reports the tasks of a shim that died.

// healthPolicy is how the agent's health is checked.
type healthPolicy struct {
	// Interval is the time between two checks.
	Interval time.Duration
	// Timeout bounds one Check call.
	Timeout time.Duration
	// Failures is how many checks in a row must fail before the sandbox
	// is declared dead: one slow answer on a loaded TCG host is not a
	// hang.
	Failures int
}

// healthFailures is healthPolicy.Failures.
const healthFailures = 2

// healthPolicyOf is the policy of [agent] in cfg: with the defaults, a hung
// guest is declared dead within about Failures × (Interval + Timeout) =
// 30 s.
func healthPolicyOf(cfg *config.Config) healthPolicy {
	p := healthPolicy{
		Interval: cfg.Agent.HealthCheckInterval.Duration,
		Timeout:  cfg.Agent.HealthCheckTimeout.Duration,
		Failures: healthFailures,
	}
	// config.Load refuses zero durations; a Config built in code may
	// still hold them.
	if p.Interval <= 0 {
		p.Interval = 5 * time.Second
	}
	if p.Timeout <= 0 {
		p.Timeout = 10 * time.Second
	}
	return p
}

// deadStopTimeout bounds stopping a dead sandbox; a hung QEMU does not
// answer QMP quit and is killed when it passes.
const deadStopTimeout = 5 * time.Second

// errSandboxExited is the death reason when QEMU exited by itself.
var errSandboxExited = errors.New("the VM exited")

// watchSandbox returns why sb is dead, or nil when ctx ends first.
func watchSandbox(ctx context.Context, sb Sandbox, p healthPolicy) error {
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	failed := 0
	for {
		select {
		case <-sb.Done():
			return errSandboxExited
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		err := checkAgent(ctx, sb, p.Timeout)
		if err == nil {
			failed = 0
			continue
		}
		select {
		case <-sb.Done():
			return errSandboxExited
		case <-ctx.Done():
			return nil
		default:
		}
		failed++
		log.G(ctx).WithError(err).WithField("failures", failed).Warn("agent health check failed")
		if failed >= p.Failures {
			return fmt.Errorf("agent failed %d health checks in a row (each bounded by %v): %w", failed, p.Timeout, err)
		}
	}
}

// checkAgent calls the agent's Check with a deadline. The call runs apart
// so that a transport that ignores the deadline cannot block the watcher.
func checkAgent(ctx context.Context, sb Sandbox, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := sb.Agent().Check(ctx, &agentpb.CheckRequest{})
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer within %v: %w", timeout, ctx.Err())
	}
}

// sandboxGone reports whether err, from an agent call, means the sandbox
// is gone. The agent connection closes first when the shim stops a dead
// sandbox, and a hung QEMU is killed only after deadStopTimeout: a closed
// connection waits (bounded) for QEMU's exit.
func sandboxGone(ctx context.Context, sb Sandbox, err error) bool {
	if !errors.Is(err, ttrpc.ErrClosed) {
		select {
		case <-sb.Done():
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(2 * deadStopTimeout)
	defer t.Stop()
	select {
	case <-sb.Done():
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// watchHealth stops the shim's sandbox once it is dead, unless the shim
// stopped it itself meanwhile.
func (s *service) watchHealth(sb Sandbox, p healthPolicy) {
	reason := watchSandbox(s.ctx, sb, p)
	if reason == nil {
		return
	}
	s.mu.Lock()
	current := s.sandbox == sb
	id := s.sandboxID
	s.mu.Unlock()
	if !current {
		return // stopped by Shutdown, not dead
	}
	log.G(s.ctx).WithError(reason).WithField("sandbox", id).Error("sandbox is dead; its processes are reported exited with status 255")
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), deadStopTimeout)
	defer cancel()
	if err := sb.Stop(ctx); err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", id).Warn("stop dead sandbox")
	}
}
