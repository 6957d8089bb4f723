package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/pkg/stdio"
	"github.com/containerd/log"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/stdiostream"
)

const (
	// copyBufSize is the buffer of one output stream's copy.
	copyBufSize = 256 << 10
	// writeChunk is the buffer of the stdin copy.
	writeChunk = 32 << 10
	// attachTimeout bounds the dial and attach of one stdio stream.
	attachTimeout = 10 * time.Second
	// outputGrace bounds how long an exit waits for output that stops
	// flowing: a stream that makes no progress for this long is given up,
	// so that a stuck stream cannot hold TaskExit forever.
	outputGrace = 10 * time.Second
	// stdinGrace bounds how long CloseIO waits for stdin to drain.
	stdinGrace = 5 * time.Second
)

// exitStatusLost is reported when the agent cannot tell how a process ended
// (the VM died): what containerd reports for a shim that died.
const exitStatusLost = 255

// process is a container's init process (execID "") or one of its execs.
type process struct {
	containerID string
	execID      string
	terminal    bool
	stdio       stdio.Stdio
	// spec is the OCI process as JSON (execs only).
	spec []byte

	mu         sync.Mutex
	status     task.Status // guarded by mu
	pid        uint32      // guarded by mu
	exitStatus uint32      // guarded by mu
	exitedAt   time.Time   // guarded by mu
	starting   bool        // guarded by mu; Start was called (and did not fail)
	// startDone is non-nil while a Start is in flight, and closed when it
	// is over (its TaskStart queued, or failed).
	startDone chan struct{} // guarded by mu
	// unstartable is set once the exit of a process never started is
	// seen: no Start may follow it.
	unstartable bool // guarded by mu

	// exited is closed once the exit is recorded and TaskExit queued.
	exited   chan struct{}
	exitOnce sync.Once

	hio       *hostIO
	outDone   chan struct{} // closed when both output streams are over
	stdinDone chan struct{} // closed when the stdin copy is over
	progress  chan struct{} // receives when output moves
}

func newProcess(containerID, execID string, terminal bool, s stdio.Stdio) *process {
	return &process{
		containerID: containerID,
		execID:      execID,
		terminal:    terminal,
		stdio:       s,
		status:      task.Status_CREATED,
		exited:      make(chan struct{}),
		outDone:     make(chan struct{}),
		stdinDone:   make(chan struct{}),
		progress:    make(chan struct{}, 1),
	}
}

func (p *process) logger(ctx context.Context) *log.Entry {
	l := log.G(ctx).WithField("id", p.containerID)
	if p.execID != "" {
		l = l.WithField("exec_id", p.execID)
	}
	return l
}

func (p *process) state() (task.Status, uint32, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.pid, p.exitStatus, p.exitedAt
}

func (p *process) setStatus(s task.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != task.Status_STOPPED {
		p.status = s
	}
}

// claimStart marks a created process as being started; only one Start
// call may go on, and none after the process died unstarted.
func (p *process) claimStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.unstartable {
		return fmt.Errorf("process %q of container %s exited before it was started: %w", p.execID, p.containerID, errdefs.ErrFailedPrecondition)
	}
	if p.status != task.Status_CREATED || p.starting {
		return fmt.Errorf("process %q of container %s is %s, not created: %w", p.execID, p.containerID, p.status, errdefs.ErrFailedPrecondition)
	}
	p.starting = true
	p.startDone = make(chan struct{})
	return nil
}

// endStart ends the Start that claimStart began; ok says it succeeded
// and its TaskStart (or TaskExecStarted) is queued.
func (p *process) endStart(ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !ok {
		p.starting = false
	}
	if p.startDone != nil {
		close(p.startDone)
		p.startDone = nil
	}
}

// settleStart is called once the process exited: it waits for a Start in
// flight to end, so that its TaskStart goes before TaskExit, and forbids
// any later Start of a process that never started (killed while created).
func (p *process) settleStart(ctx context.Context) {
	for {
		p.mu.Lock()
		done := p.startDone
		if done == nil {
			p.unstartable = !p.starting
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

// hasExited reports whether the exit was recorded.
func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// openIO opens the host side of the stdio. Call it before the agent
// creates the process, so that a failure leaves nothing running.
func (p *process) openIO(ctx context.Context) error {
	hio, err := openHostIO(ctx, p.containerID, p.stdio)
	if err != nil {
		return err
	}
	p.hio = hio
	return nil
}

// dialFunc opens a new connection to the agent's stdio stream port
// (Sandbox.DialStdio).
type dialFunc func(ctx context.Context) (net.Conn, error)

// startCopies attaches the process's stdio streams in the agent, each on a
// connection of its own (package stdiostream), and starts copying them. It
// returns once every stream is attached or failed, so that the process's
// output is read from the start: until then its pipes hold it. ctx lives
// as long as the shim.
func (p *process) startCopies(ctx context.Context, dial dialFunc) {
	hio := p.hio
	var attached, outputs sync.WaitGroup
	stream := func(kind stdiostream.Kind, run func(net.Conn), failed func()) {
		attached.Add(1)
		go func() {
			c, err := p.attach(ctx, dial, kind)
			attached.Done()
			if err != nil {
				p.logger(ctx).WithError(err).Warn("attach process stdio")
				failed()
				return
			}
			run(c)
		}()
	}
	out := func(kind stdiostream.Kind, w io.Writer) {
		outputs.Add(1)
		stream(kind, func(c net.Conn) {
			defer outputs.Done()
			p.copyOut(ctx, c, w, kind.String())
		}, func() {
			defer outputs.Done()
			hio.closeStream(kind.String())
		})
	}
	out(stdiostream.Stdout, hio.stdout)
	if !p.terminal {
		out(stdiostream.Stderr, hio.stderr)
	}
	if hio.stdin != nil {
		stream(stdiostream.Stdin, func(c net.Conn) { p.copyIn(ctx, c, hio.stdin) }, func() { close(p.stdinDone) })
	} else {
		close(p.stdinDone)
	}
	attached.Wait()
	go func() {
		outputs.Wait()
		close(p.outDone)
	}()
}

// attach dials one stdio stream of the process and attaches it, within
// attachTimeout.
func (p *process) attach(ctx context.Context, dial dialFunc, kind stdiostream.Kind) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", kind, err)
	}
	if err := stdiostream.Attach(ctx, c, stdiostream.Header{Kind: kind, ContainerID: p.containerID, ExecID: p.execID}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// copyOut moves one output stream from its connection to the host until
// the agent's close (EOF), with one large buffer: the connection is a
// user-space object, which the kernel cannot splice from. A host writer
// that blocks (a fifo nobody reads) stalls this stream only: the guest's
// credit runs out and the process blocks on its pipe.
func (p *process) copyOut(ctx context.Context, c net.Conn, w io.Writer, name string) {
	defer c.Close()
	out := &sink{w: w}
	buf := make([]byte, copyBufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			out.Write(ctx, buf[:n])
			select {
			case p.progress <- struct{}{}:
			default:
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				p.hio.closeStream(name)
			} else if ctx.Err() == nil {
				p.logger(ctx).WithError(err).WithField("stream", name).Warn("read process output")
			}
			return
		}
	}
}

// copyIn moves stdin from the host to its connection; at the fifo's end
// (the client closed it, or CloseIO) it half-closes the connection, and
// the agent closes the process's stdin.
func (p *process) copyIn(ctx context.Context, c net.Conn, r io.Reader) {
	// The agent sends nothing on stdin; whatever a guest sends is
	// discarded through a small buffer. Its end says the agent is done.
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		_, _ = io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 4<<10))
	}()
	buf := make([]byte, writeChunk)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				p.logger(ctx).WithError(err).Debug("write stdin")
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	close(p.stdinDone)
	t := time.NewTimer(stdinGrace)
	defer t.Stop()
	select {
	case <-agentDone:
	case <-t.C:
	case <-ctx.Done():
	}
	c.Close()
}

// closeStdin ends the stdin copy: it waits a little for the client's data
// still in the fifo to be copied, then closes the fifo.
func (p *process) closeStdin(ctx context.Context) {
	if p.hio == nil || p.hio.stdin == nil {
		return
	}
	t := time.NewTimer(stdinGrace)
	defer t.Stop()
	select {
	case <-p.stdinDone:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	p.hio.stdin.Close()
}

// waitOutput waits until both output streams are over, or until they have
// made no progress for outputGrace.
func (p *process) waitOutput(ctx context.Context) {
	if p.hio == nil {
		return
	}
	t := time.NewTimer(outputGrace)
	defer t.Stop()
	for {
		select {
		case <-p.outDone:
			return
		case <-p.progress:
			t.Reset(outputGrace)
		case <-t.C:
			p.logger(ctx).Warn("process output did not reach EOF; reporting the exit anyway")
			return
		case <-ctx.Done():
			return
		}
	}
}

// waitAgent blocks until the agent reports the process's exit, and
// returns its status and the host time the shim learned of it.
//
// The exit time is the host's, never the guest's (the agent's
// ExitedAtUnixNano): containerd and its clients take start times from the
// host clock, and a guest clock, set from the RTC at boot and left to
// drift, can put an exit before its start.
func (p *process) waitAgent(ctx context.Context, agent agentpb.AgentService) (uint32, time.Time) {
	resp, err := agent.WaitProcess(ctx, &agentpb.ProcessRequest{ContainerId: p.containerID, ExecId: p.execID})
	at := time.Now()
	if err != nil {
		p.logger(ctx).WithError(err).Warn("wait for process; reporting it lost")
		return exitStatusLost, at
	}
	status := resp.ExitStatus
	if status > 255 {
		status = exitStatusLost
	}
	return status, at
}

// recordExit stores the exit; the caller queues TaskExit and then calls
// markExited.
func (p *process) recordExit(status uint32, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status = task.Status_STOPPED
	p.exitStatus = status
	p.exitedAt = at
}

func (p *process) markExited() { close(p.exited) }

// onceExit runs publish, which records the exit, queues TaskExit and marks
// it, once in the process's life: the exit watcher and a Delete that gave
// up waiting for it may both try.
func (p *process) onceExit(publish func()) { p.exitOnce.Do(publish) }

// closeIO releases the host side of the stdio.
func (p *process) closeIO() {
	if p.hio != nil {
		p.hio.close()
	}
}

// wait blocks until the process exited or ctx ends.
func (p *process) wait(ctx context.Context) error {
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func errProcessFinished(id string) error {
	return fmt.Errorf("process %s already finished: %w", id, errdefs.ErrNotFound)
}
