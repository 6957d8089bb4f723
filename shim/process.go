package shim

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/pkg/stdio"
	"github.com/containerd/log"
	agentpb "github.com/vmpod/vmpod/proto"
)

const (
	// readChunk is how much output one ReadStdout/ReadStderr call asks for.
	readChunk = 256 << 10
	// writeChunk is how much stdin one WriteStdin call carries.
	writeChunk = 32 << 10
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

// startCopies starts the copies between the host stdio and the agent, once
// the agent created the process. ctx lives as long as the shim.
func (p *process) startCopies(ctx context.Context, agent agentpb.AgentService) {
	hio := p.hio
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.copyOut(ctx, agent.ReadStdout, hio.stdout, "stdout")
	}()
	if !p.terminal {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.copyOut(ctx, agent.ReadStderr, hio.stderr, "stderr")
		}()
	}
	go func() {
		wg.Wait()
		close(p.outDone)
	}()
	if hio.stdin != nil {
		go p.copyIn(ctx, agent, hio.stdin)
	} else {
		close(p.stdinDone)
	}
}

type readFunc func(context.Context, *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error)

// copyOut moves one output stream from the agent to the host until the
// agent reports EOF.
func (p *process) copyOut(ctx context.Context, read readFunc, w io.Writer, name string) {
	out := &sink{w: w}
	req := &agentpb.ReadStreamRequest{ContainerId: p.containerID, ExecId: p.execID, Len: readChunk}
	empty := 0
	for {
		resp, err := read(ctx, req)
		if err != nil {
			if ctx.Err() == nil {
				p.logger(ctx).WithError(err).WithField("stream", name).Warn("read process output")
			}
			return
		}
		if len(resp.Data) > readChunk {
			// The guest is not trusted to respect the limit we asked for.
			p.logger(ctx).WithField("stream", name).Errorf("agent returned %d bytes for a %d-byte read; dropping the stream", len(resp.Data), readChunk)
			return
		}
		if len(resp.Data) == 0 && !resp.Eof {
			// The agent blocks until data comes; a guest answering empty
			// reads in a loop must not spin the shim.
			if empty++; empty > 16 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		empty = 0
		if len(resp.Data) > 0 {
			out.Write(ctx, resp.Data)
			select {
			case p.progress <- struct{}{}:
			default:
			}
		}
		if resp.Eof {
			p.hio.closeStream(name)
			return
		}
	}
}

// copyIn moves stdin from the host to the agent, and closes the process's
// stdin at EOF.
func (p *process) copyIn(ctx context.Context, agent agentpb.AgentService, r io.Reader) {
	defer close(p.stdinDone)
	buf := make([]byte, writeChunk)
	for {
		n, rerr := r.Read(buf)
		for data := buf[:n]; len(data) > 0; {
			resp, err := agent.WriteStdin(ctx, &agentpb.WriteStdinRequest{ContainerId: p.containerID, ExecId: p.execID, Data: data})
			if err != nil {
				p.logger(ctx).WithError(err).Debug("write stdin")
				return
			}
			if resp.Len == 0 || int(resp.Len) > len(data) {
				p.logger(ctx).Errorf("agent accepted %d of %d stdin bytes", resp.Len, len(data))
				return
			}
			data = data[resp.Len:]
		}
		if rerr != nil {
			break
		}
	}
	if _, err := agent.CloseStdin(ctx, &agentpb.ProcessRequest{ContainerId: p.containerID, ExecId: p.execID}); err != nil {
		p.logger(ctx).WithError(err).Debug("close stdin")
	}
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
