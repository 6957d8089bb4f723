package goclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd"
	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl/v2"

	"github.com/vmpod/vmpod/integration/harness"
)

// Runtime names for goClientEnv.newContainer.
const (
	kataRuntime = "io.containerd.kata.v2"
	runcRuntime = "io.containerd.runc.v2"
)

// Bounds of the Go-client helpers. A VM boots in TCG here, so the first
// call on a container takes tens of seconds.
const (
	goClientCallTimeout = 3 * time.Minute
	goClientWaitTimeout = 2 * time.Minute
)

// goClientEnv is a private containerd with the shim of this tree, driven
// through containerd's own Go client as its client tests do. The busybox
// image is imported and unpacked; ctr (e.c) still works beside the client.
type goClientEnv struct {
	*vmpodEnv
	client *containerd.Client
	img    containerd.Image
}

// newGoClientEnv starts the private containerd (extraConfig is appended to
// the vmpod configuration, as for newVMPodEnv) and connects a client in the
// harness's namespace. The client is closed when the test ends, after the
// containers it made are gone.
func newGoClientEnv(t *testing.T, extraConfig string) *goClientEnv {
	t.Helper()
	e := newVMPodEnv(t, extraConfig)
	client, err := containerd.New(e.c.Address, containerd.WithDefaultNamespace(harness.Namespace),
		containerd.WithTimeout(harness.DefaultStartTimeout))
	if err != nil {
		t.Fatalf("containerd client on %s: %v", e.c.Address, err)
	}
	t.Cleanup(func() { client.Close() })
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	img, err := client.GetImage(ctx, e.image)
	if err != nil {
		t.Fatalf("image %s: %v", e.image, err)
	}
	if ok, err := img.IsUnpacked(ctx, containerd.DefaultSnapshotter); err != nil || !ok {
		if err := img.Unpack(ctx, containerd.DefaultSnapshotter); err != nil {
			t.Fatalf("unpacking %s: %v", e.image, err)
		}
	}
	return &goClientEnv{vmpodEnv: e, client: client, img: img}
}

// newContainer creates container id of the busybox image with runtime
// (kataRuntime or runcRuntime), the image's config and then specOpts
// applied to containerd's default spec. When the test ends its task is
// killed and deleted, and the container with its snapshot.
func (e *goClientEnv) newContainer(t *testing.T, id, runtime string, specOpts ...oci.SpecOpts) containerd.Container {
	t.Helper()
	return e.newContainerWithRuntime(t, id, runtime, nil, specOpts...)
}

// newContainerWithRuntime is newContainer with runtime options (for
// example runc's *options.Options), as containerd.WithRuntime takes them.
func (e *goClientEnv) newContainerWithRuntime(t *testing.T, id, runtime string, runtimeOpts any, specOpts ...oci.SpecOpts) containerd.Container {
	t.Helper()
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	opts := append([]oci.SpecOpts{oci.WithImageConfig(e.img)}, specOpts...)
	c, err := e.client.NewContainer(ctx, id,
		containerd.WithRuntime(runtime, runtimeOpts),
		containerd.WithNewSnapshot(id+"-snapshot", e.img),
		containerd.WithNewSpec(opts...))
	if err != nil {
		t.Fatalf("creating container %s (%s): %v", id, runtime, err)
	}
	t.Cleanup(func() { e.removeContainer(t, c) })
	return c
}

// removeContainer kills and deletes c's task if there is one, then c and
// its snapshot. Errors are test errors: a test should leave a container
// that can be removed.
func (e *goClientEnv) removeContainer(t *testing.T, c containerd.Container) {
	t.Helper()
	ctx, cancel := e.ctx(time.Minute)
	defer cancel()
	if task, err := c.Task(ctx, nil); err == nil {
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("deleting the task of %s: %v", c.ID(), err)
		}
	} else if !errdefs.IsNotFound(err) {
		t.Errorf("task of %s: %v", c.ID(), err)
	}
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		t.Errorf("deleting container %s: %v", c.ID(), err)
	}
}

// syncBuffer is a bytes.Buffer safe for cio's copy goroutines and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// taskIO holds what a task or exec wrote. Read it after wait: the copies
// end when the process's IO is closed.
type taskIO struct {
	Stdout, Stderr syncBuffer
}

// creator returns a cio.Creator writing into io, without stdin, and the
// further cio options (cio.WithTerminal).
func (io *taskIO) creator(opts ...cio.Opt) cio.Creator {
	return cio.NewCreator(append([]cio.Opt{cio.WithStreams(nil, &io.Stdout, &io.Stderr)}, opts...)...)
}

// newTask creates c's task with its output captured (no stdin); ioOpts
// are further cio options such as cio.WithTerminal. The task is created,
// not started.
func (e *goClientEnv) newTask(t *testing.T, c containerd.Container, ioOpts ...cio.Opt) (containerd.Task, *taskIO) {
	t.Helper()
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	out := &taskIO{}
	task, err := c.NewTask(ctx, out.creator(ioOpts...))
	if err != nil {
		t.Fatalf("creating the task of %s: %v", c.ID(), err)
	}
	return task, out
}

// waitChan returns p's exit channel; call it before Start or Kill, as
// containerd's clients do, so that no exit is missed.
func (e *goClientEnv) waitChan(t *testing.T, p containerd.Process) <-chan containerd.ExitStatus {
	t.Helper()
	// Wait's context must outlive this call: it carries the stream.
	ctx, cancel := e.ctx(goClientCallTimeout + goClientWaitTimeout)
	t.Cleanup(cancel)
	ch, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("wait on %s: %v", p.ID(), err)
	}
	return ch
}

// waitExit receives from ch within timeout and returns the exit status;
// it fails the test if none comes or the status carries an error.
func waitExit(t *testing.T, what string, ch <-chan containerd.ExitStatus, timeout time.Duration) containerd.ExitStatus {
	t.Helper()
	select {
	case st := <-ch:
		if err := st.Error(); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		return st
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", what, timeout)
		return containerd.ExitStatus{}
	}
}

// start starts p.
func (e *goClientEnv) start(t *testing.T, p interface {
	Start(context.Context) error
	ID() string
}) {
	t.Helper()
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatalf("starting %s: %v", p.ID(), err)
	}
}

// deleteTask deletes task (which has exited) and returns its exit status.
func (e *goClientEnv) deleteTask(t *testing.T, task containerd.Task, opts ...containerd.ProcessDeleteOpts) *containerd.ExitStatus {
	t.Helper()
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	st, err := task.Delete(ctx, opts...)
	if err != nil {
		t.Fatalf("deleting task %s: %v", task.ID(), err)
	}
	return st
}

// runResult is what runTask saw.
type runResult struct {
	Exit           containerd.ExitStatus
	Stdout, Stderr string
	Started        time.Time // host time just before Start was called
	Returned       time.Time // host time when Wait returned
}

// runTask creates, starts and waits for c's task (at most
// goClientWaitTimeout after start), deletes it, and returns its exit and
// output.
func (e *goClientEnv) runTask(t *testing.T, c containerd.Container, ioOpts ...cio.Opt) runResult {
	t.Helper()
	task, out := e.newTask(t, c, ioOpts...)
	ch := e.waitChan(t, task)
	var r runResult
	r.Started = time.Now()
	e.start(t, task)
	r.Exit = waitExit(t, "task "+c.ID(), ch, goClientWaitTimeout)
	r.Returned = time.Now()
	e.deleteTask(t, task)
	r.Stdout, r.Stderr = out.Stdout.String(), out.Stderr.String()
	return r
}

// runContainer creates container id with runtime and specOpts, runs its
// task to the end and removes the container.
func (e *goClientEnv) runContainer(t *testing.T, id, runtime string, specOpts ...oci.SpecOpts) runResult {
	t.Helper()
	c := e.newContainer(t, id, runtime, specOpts...)
	r := e.runTask(t, c)
	e.removeContainer(t, c)
	return r
}

// execProcess adds exec execID to task with spec pspec (cio as newTask) and
// returns it, not started.
func (e *goClientEnv) execProcess(t *testing.T, task containerd.Task, execID string, pspec func(*oci.Spec) *oci.Spec, ioOpts ...cio.Opt) (containerd.Process, *taskIO) {
	t.Helper()
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	spec, err := task.Spec(ctx)
	if err != nil {
		t.Fatalf("spec of task %s: %v", task.ID(), err)
	}
	out := &taskIO{}
	p, err := task.Exec(ctx, execID, pspec(spec).Process, out.creator(ioOpts...))
	if err != nil {
		t.Fatalf("exec %s in %s: %v", execID, task.ID(), err)
	}
	return p, out
}

// execArgs returns a pspec for execProcess: the task's process with args
// (and a terminal if tty).
func execArgs(tty bool, args ...string) func(*oci.Spec) *oci.Spec {
	return func(s *oci.Spec) *oci.Spec {
		p := *s.Process
		p.Args = args
		p.Terminal = tty
		s.Process = &p
		return s
	}
}

// runExec runs exec execID with args in the running task to the end and
// returns its exit and output.
func (e *goClientEnv) runExec(t *testing.T, task containerd.Task, execID string, args []string, ioOpts ...cio.Opt) runResult {
	t.Helper()
	tty := false
	for _, o := range ioOpts {
		var s cio.Streams
		o(&s)
		tty = tty || s.Terminal
	}
	p, out := e.execProcess(t, task, execID, execArgs(tty, args...), ioOpts...)
	ch := e.waitChan(t, p)
	var r runResult
	r.Started = time.Now()
	e.start(t, p)
	r.Exit = waitExit(t, "exec "+execID, ch, goClientWaitTimeout)
	r.Returned = time.Now()
	ctx, cancel := e.ctx(goClientCallTimeout)
	defer cancel()
	if _, err := p.Delete(ctx); err != nil {
		t.Fatalf("deleting exec %s: %v", execID, err)
	}
	r.Stdout, r.Stderr = out.Stdout.String(), out.Stderr.String()
	return r
}

// taskEvent is one task event containerd published, decoded.
type taskEvent struct {
	Topic     string
	Timestamp time.Time // the envelope's: when the shim published it
	Event     any       // *eventtypes.TaskCreate, *eventtypes.TaskExit, ...
}

// eventRecorder records the /tasks/ events of the harness's namespace
// through the client's event service.
type eventRecorder struct {
	mu     sync.Mutex
	events []taskEvent
	errs   []error
}

// recordEvents subscribes to task events until the test ends. Subscribe
// before the first call that publishes what the test looks for.
func (e *goClientEnv) recordEvents(t *testing.T) *eventRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), harness.Namespace))
	ch, errc := e.client.EventService().Subscribe(ctx, `topic~="/tasks/"`)
	r := &eventRecorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case env := <-ch:
				ev, err := typeurl.UnmarshalAny(env.Event)
				r.mu.Lock()
				if err != nil {
					r.errs = append(r.errs, fmt.Errorf("decoding %s: %w", env.Topic, err))
				} else {
					r.events = append(r.events, taskEvent{Topic: env.Topic, Timestamp: env.Timestamp, Event: ev})
				}
				r.mu.Unlock()
			case err := <-errc:
				if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
					r.mu.Lock()
					r.errs = append(r.errs, err)
					r.mu.Unlock()
				}
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("event subscription did not end within 10s")
		}
	})
	// The subscription is registered once the stream is open: publish
	// nothing before then. A probe is not possible without an event, so
	// give the stream a moment.
	time.Sleep(200 * time.Millisecond)
	return r
}

// of returns the events so far of container id.
func (r *eventRecorder) of(id string) []taskEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []taskEvent
	for _, ev := range r.events {
		if eventContainer(ev.Event) == id {
			out = append(out, ev)
		}
	}
	return out
}

// topics is of(id) as topics, exits suffixed with their process id
// ("/tasks/exit:e1"), the form waitTopics of eventLog uses.
func (r *eventRecorder) topics(id string) []string {
	var out []string
	for _, ev := range r.of(id) {
		topic := ev.Topic
		if x, ok := ev.Event.(*eventtypes.TaskExit); ok {
			topic += ":" + x.ID
		}
		out = append(out, topic)
	}
	return out
}

// waitTopics waits (at most 30 s) until want appears in order among id's
// topics, and fails the test with what was seen otherwise.
func (r *eventRecorder) waitTopics(t *testing.T, id string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := r.topics(id)
		if isSubsequence(want, got) {
			return
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			errs := r.errs
			r.mu.Unlock()
			t.Errorf("events of %s: %v, want in order %v (subscription errors: %v)", id, got, want, errs)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// eventContainer is the container an event is about, or "".
func eventContainer(ev any) string {
	switch x := ev.(type) {
	case *eventtypes.TaskCreate:
		return x.ContainerID
	case *eventtypes.TaskStart:
		return x.ContainerID
	case *eventtypes.TaskExit:
		return x.ContainerID
	case *eventtypes.TaskDelete:
		return x.ContainerID
	case *eventtypes.TaskOOM:
		return x.ContainerID
	case *eventtypes.TaskExecAdded:
		return x.ContainerID
	case *eventtypes.TaskExecStarted:
		return x.ContainerID
	case *eventtypes.TaskPaused:
		return x.ContainerID
	case *eventtypes.TaskResumed:
		return x.ContainerID
	case *eventtypes.TaskCheckpointed:
		return x.ContainerID
	}
	return ""
}

// TestGoClientRun is the scaffold's own check: a task run through
// containerd's Go client prints, exits with its status and sends Create,
// Start, Exit and Delete in that order, with vmpod as with runc.
func TestGoClientRun(t *testing.T) {
	e := newGoClientEnv(t, "")
	events := e.recordEvents(t)
	for _, runtime := range []string{kataRuntime, runcRuntime} {
		t.Run(runtime, func(t *testing.T) {
			id := "gorun-" + shortRuntime(runtime)
			r := e.runContainer(t, id, runtime, oci.WithProcessArgs("sh", "-c", "echo out; echo err >&2; exit 3"))
			if r.Exit.ExitCode() != 3 {
				t.Errorf("exit status %d, want 3", r.Exit.ExitCode())
			}
			if r.Stdout != "out\n" || r.Stderr != "err\n" {
				t.Errorf("stdout %q, stderr %q; want \"out\\n\", \"err\\n\"", r.Stdout, r.Stderr)
			}
			events.waitTopics(t, id, "/tasks/create", "/tasks/start", "/tasks/exit:"+id, "/tasks/delete")
		})
	}
}

// shortRuntime is "kata" or "runc", for container ids.
func shortRuntime(runtime string) string {
	if runtime == runcRuntime {
		return "runc"
	}
	return "kata"
}
