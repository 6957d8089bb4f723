package shim

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/pkg/stdio"
	agentpb "github.com/vmpod/vmpod/proto"
)

// oomAgent answers GetOOMEvent at once, every time, with what next says.
type oomAgent struct {
	agentpb.AgentService
	calls atomic.Int64
	next  func(n int64) (*agentpb.OOMEvent, error)
}

func (a *oomAgent) GetOOMEvent(context.Context, *agentpb.GetOOMEventRequest) (*agentpb.OOMEvent, error) {
	return a.next(a.calls.Add(1))
}

// TestHostileOOMEvents: an agent that answers GetOOMEvent at once with
// unknown ids, the same id again and again, or errors must leave the shim
// idle: few calls over the window (backoff), and few TaskOOM events (one a
// second per container at most). A real event still goes through.
func TestHostileOOMEvents(t *testing.T) {
	const window = 3 * time.Second
	// Without backoff an agent answering at once is called thousands of
	// times in the window; with it, about log2(oomBackoffMax/oomBackoffMin)
	// times plus one per published event.
	const maxCalls = 30
	for _, tc := range []struct {
		name      string
		next      func(n int64) (*agentpb.OOMEvent, error)
		minEvents int
		maxEvents int
	}{
		{"unknown ids", func(n int64) (*agentpb.OOMEvent, error) {
			return &agentpb.OOMEvent{ContainerId: "no-such-container"}, nil
		}, 0, 0},
		{"repeated id", func(n int64) (*agentpb.OOMEvent, error) {
			return &agentpb.OOMEvent{ContainerId: "c"}, nil
		}, 1, int(window/oomRepeatWindow) + 1},
		{"errors", func(n int64) (*agentpb.OOMEvent, error) {
			return nil, errors.New("hostile")
		}, 0, 0},
		{"empty answers", func(n int64) (*agentpb.OOMEvent, error) {
			return &agentpb.OOMEvent{}, nil
		}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			agent := &oomAgent{next: tc.next}
			pub := &recorder{}
			s := &service{
				ctx:        testCtx(t),
				events:     newEventQueue(),
				containers: map[string]*container{"c": {id: "c", init: newProcess("c", "", false, stdio.Stdio{})}},
			}
			go s.events.forward(context.Background(), pub)
			// In process: the fastest answers an agent can give.
			sb := &clientSandbox{agent: agent, done: make(chan struct{})}
			returned := make(chan struct{})
			go func() {
				defer close(returned)
				s.watchOOM(sb)
			}()
			time.Sleep(window)
			close(sb.done)
			select {
			case <-returned:
			case <-time.After(oomBackoffMax + 5*time.Second):
				t.Fatal("watchOOM did not return after the sandbox stopped")
			}
			s.events.close()
			<-s.events.done
			calls, events := agent.calls.Load(), len(pub.names())
			t.Logf("%d GetOOMEvent calls, %d TaskOOM events in %s", calls, events, window)
			if calls > maxCalls {
				t.Errorf("%d GetOOMEvent calls in %s, want at most %d: the shim spins", calls, window, maxCalls)
			}
			if events < tc.minEvents || events > tc.maxEvents {
				t.Errorf("%d TaskOOM events, want %d to %d", events, tc.minEvents, tc.maxEvents)
			}
		})
	}
}

// TestOOMEventsStillFlow: distinct real OOM kills of two containers, an
// event each, are published at once, without backoff between them.
func TestOOMEventsStillFlow(t *testing.T) {
	ids := []string{"a", "b"}
	agent := &oomAgent{}
	block := make(chan struct{})
	agent.next = func(n int64) (*agentpb.OOMEvent, error) {
		if int(n) <= len(ids) {
			return &agentpb.OOMEvent{ContainerId: ids[n-1]}, nil
		}
		<-block // the agent's long poll: no more events
		return nil, errors.New("closed")
	}
	pub := &recorder{}
	s := &service{ctx: testCtx(t), events: newEventQueue(), containers: map[string]*container{}}
	for _, id := range ids {
		s.containers[id] = &container{id: id, init: newProcess(id, "", false, stdio.Stdio{})}
	}
	go s.events.forward(context.Background(), pub)
	sb := &clientSandbox{agent: agent, done: make(chan struct{})}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		s.watchOOM(sb)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(pub.names()) < len(ids) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(sb.done)
	close(block)
	<-returned
	s.events.close()
	<-s.events.done
	if got := pub.names(); len(got) != 2 || got[0] != "oom" || got[1] != "oom" {
		t.Errorf("events %v, want two TaskOOM", got)
	}
	for _, id := range ids {
		if !s.containers[id].markOOM() {
			t.Errorf("container %s not marked as OOM-killed", id)
		}
	}
}
