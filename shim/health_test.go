package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/mountns"

	"github.com/containerd/ttrpc"
	agentpb "github.com/vmpod/vmpod/proto"
)

// checkAgentDouble answers Check as told; every other method panics (the
// embedded nil interface), since the watcher must call nothing else.
type checkAgentDouble struct {
	agentpb.AgentService
	check func(ctx context.Context) error
	calls atomic.Int32
}

func (a *checkAgentDouble) Check(ctx context.Context, _ *agentpb.CheckRequest) (*agentpb.CheckResponse, error) {
	a.calls.Add(1)
	return &agentpb.CheckResponse{}, a.check(ctx)
}

// fakeSandbox is a sandbox whose agent only answers Check.
type fakeSandbox struct {
	agent    *checkAgentDouble
	done     chan struct{}
	stopOnce sync.Once
	stops    atomic.Int32
}

func newFakeSandbox(check func(ctx context.Context) error) *fakeSandbox {
	return &fakeSandbox{agent: &checkAgentDouble{check: check}, done: make(chan struct{})}
}

func (f *fakeSandbox) Agent() agentpb.AgentService { return f.agent }
func (f *fakeSandbox) SharedDir() string           { return "" }
func (f *fakeSandbox) GuestSharedDir() string      { return "" }
func (f *fakeSandbox) MountNS() *mountns.NS        { return nil }
func (f *fakeSandbox) Done() <-chan struct{}       { return f.done }
func (f *fakeSandbox) DialStdio(context.Context) (net.Conn, error) {
	return nil, errors.New("no stdio streams")
}
func (f *fakeSandbox) Stop(context.Context) error {
	f.stops.Add(1)
	f.stopOnce.Do(func() { close(f.done) })
	return nil
}

var fastHealth = healthPolicy{Interval: 10 * time.Millisecond, Timeout: 50 * time.Millisecond, Failures: 2}

// watch runs watchSandbox with a bound on how long it may take.
func watch(t *testing.T, ctx context.Context, sb Sandbox) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- watchSandbox(ctx, sb, fastHealth) }()
	select {
	case err := <-res:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("watchSandbox did not return")
		return nil
	}
}

func TestWatchSandboxVMExit(t *testing.T) {
	sb := newFakeSandbox(func(context.Context) error { return nil })
	close(sb.done)
	if err := watch(t, context.Background(), sb); !errors.Is(err, errSandboxExited) {
		t.Errorf("reason %v, want %v", err, errSandboxExited)
	}
}

// A hung agent (Check never answers, even past its deadline) is declared
// dead after Failures checks, each bounded by Timeout.
func TestWatchSandboxHungAgent(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	sb := newFakeSandbox(func(context.Context) error { <-block; return nil })
	err := watch(t, context.Background(), sb)
	if err == nil || !strings.Contains(err.Error(), "2 health checks") {
		t.Errorf("reason %v, want 2 failed health checks", err)
	}
}

// One failed check is forgiven when the next one succeeds; a healthy
// sandbox is watched until ctx ends.
func TestWatchSandboxTransientFailure(t *testing.T) {
	var n atomic.Int32
	sb := newFakeSandbox(func(context.Context) error {
		if n.Add(1)%2 == 1 {
			return errors.New("slow guest")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := watch(t, ctx, sb); err != nil {
		t.Errorf("sandbox declared dead after alternating failures: %v", err)
	}
	if n.Load() < 4 {
		t.Errorf("%d checks, want several", n.Load())
	}
}

// watchHealth stops a dead sandbox the service still holds, and leaves
// alone one Shutdown already took away.
func TestWatchHealthStopsDeadSandbox(t *testing.T) {
	svc := &service{ctx: context.Background(), containers: map[string]*container{}}
	dead := newFakeSandbox(func(context.Context) error { return errors.New("no answer") })
	svc.sandbox, svc.sandboxID = dead, "pod"
	svc.watchHealth(dead, fastHealth)
	if dead.stops.Load() != 1 {
		t.Errorf("dead sandbox stopped %d times, want 1", dead.stops.Load())
	}

	gone := newFakeSandbox(func(context.Context) error { return nil })
	svc.sandbox = nil // Shutdown took it, then stopped it
	close(gone.done)
	svc.watchHealth(gone, fastHealth)
	if gone.stops.Load() != 0 {
		t.Errorf("sandbox stopped by Shutdown stopped again by the watcher")
	}
}

// A closed agent connection waits for the sandbox to finish dying; any
// other error with a live sandbox is the agent's answer.
func TestSandboxGone(t *testing.T) {
	sb := newFakeSandbox(func(context.Context) error { return nil })
	if sandboxGone(context.Background(), sb, errors.New("refused")) {
		t.Error("an agent error from a live sandbox taken as the sandbox gone")
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		sb.Stop(context.Background())
	}()
	if !sandboxGone(context.Background(), sb, fmt.Errorf("remove: %w", ttrpc.ErrClosed)) {
		t.Error("a closed connection of a sandbox being stopped not taken as the sandbox gone")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	live := newFakeSandbox(func(context.Context) error { return nil })
	if sandboxGone(ctx, live, ttrpc.ErrClosed) {
		t.Error("a live sandbox taken as gone once ctx ended")
	}
}
