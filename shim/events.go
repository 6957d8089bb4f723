package shim

import (
	"context"
	"io"
	"sync"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/log"
)

// eventQueue is the shim's only path to containerd's event stream: every
// event, TaskOOM included, goes through one channel drained by one goroutine,
// so containerd sees them in the order the service sent them.
type eventQueue struct {
	ch   chan any
	done chan struct{} // closed when the forwarder returned

	mu     sync.Mutex
	closed bool // guarded by mu
}

func newEventQueue() *eventQueue {
	return &eventQueue{ch: make(chan any, 128), done: make(chan struct{})}
}

// send queues e. It blocks while the queue is full rather than drop an
// event; after close it drops e (the shim is going away).
func (q *eventQueue) send(e any) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.ch <- e
}

// close ends the queue once every queued event is published.
func (q *eventQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
}

// forward publishes queued events in order until the queue is closed.
func (q *eventQueue) forward(ctx context.Context, publisher events.Publisher) {
	defer close(q.done)
	ns, _ := namespaces.Namespace(ctx)
	ctx = namespaces.WithNamespace(context.Background(), ns)
	for e := range q.ch {
		topic := topicOf(e)
		if err := publisher.Publish(ctx, topic, e); err != nil {
			log.G(ctx).WithError(err).WithField("topic", topic).Error("post event")
		}
	}
	// The shim waits for the publisher to close before it exits.
	if c, ok := publisher.(io.Closer); ok {
		c.Close()
	}
}

func topicOf(e any) string {
	switch e.(type) {
	case *eventstypes.TaskCreate:
		return runtime.TaskCreateEventTopic
	case *eventstypes.TaskStart:
		return runtime.TaskStartEventTopic
	case *eventstypes.TaskOOM:
		return runtime.TaskOOMEventTopic
	case *eventstypes.TaskExit:
		return runtime.TaskExitEventTopic
	case *eventstypes.TaskDelete:
		return runtime.TaskDeleteEventTopic
	case *eventstypes.TaskExecAdded:
		return runtime.TaskExecAddedEventTopic
	case *eventstypes.TaskExecStarted:
		return runtime.TaskExecStartedEventTopic
	case *eventstypes.TaskPaused:
		return runtime.TaskPausedEventTopic
	case *eventstypes.TaskResumed:
		return runtime.TaskResumedEventTopic
	}
	return runtime.TaskUnknownTopic
}
