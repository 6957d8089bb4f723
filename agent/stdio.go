package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/stdiostream"
)

// A process's stdio reaches the host on vsock streams the shim opens, one
// per stream (package stdiostream, served by ServeStdio). The process's
// pipes hold its output until the shim attaches; a stream the shim never
// attaches is given up after AttachTimeout, so that no process blocks
// forever on output nobody will read.

// AttachTimeout bounds the wait for the shim to attach a stream: an
// output stream is then discarded, and stdin closed.
const AttachTimeout = 30 * time.Second

// copyBufSize is the buffer of one output stream's copy: four vsock
// packets. Stdin, typed or piped in small amounts, gets less.
const (
	copyBufSize  = 256 << 10
	stdinBufSize = 32 << 10
)

// attachment is a connection attached to a stream; release is called once
// the stream is done with it and has closed it.
type attachment struct {
	conn    net.Conn
	release func()
}

func (a *attachment) close() {
	a.conn.Close()
	a.release()
}

// slot is where the shim's connection for one stream of a process arrives:
// once only, and not after the stream was given up.
type slot struct {
	mu    sync.Mutex
	state slotState
	// conn receives the attachment once its status went out (nil if that
	// failed).
	conn chan *attachment
	// abandon is closed when the process is removed.
	abandon     chan struct{}
	abandonOnce sync.Once
}

type slotState int

const (
	slotWaiting slotState = iota
	slotAttached
	slotGone
)

func newSlot() slot {
	return slot{conn: make(chan *attachment, 1), abandon: make(chan struct{})}
}

// reserve claims the slot for a connection whose header named it; the
// status says whether it may go on. The caller then sends the status and
// calls deliver.
func (s *slot) reserve() byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case slotAttached:
		return stdiostream.StatusAttached
	case slotGone:
		return stdiostream.StatusGone
	}
	s.state = slotAttached
	return stdiostream.StatusOK
}

// deliver hands a reserved slot its connection (nil: the status could not
// be sent).
func (s *slot) deliver(a *attachment) { s.conn <- a }

// giveUp ends the wait for a connection: it returns the one attached, if
// any (waiting for it to be delivered), or marks the slot gone.
func (s *slot) giveUp() *attachment {
	if s.expire() {
		return nil
	}
	// Reserved: delivered at once, or once its status write (bounded)
	// is over.
	return <-s.conn
}

// expire marks a slot still waiting as gone, and reports whether it was.
func (s *slot) expire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != slotWaiting {
		return false
	}
	s.state = slotGone
	return true
}

func (s *slot) close() { s.abandonOnce.Do(func() { close(s.abandon) }) }

// outputStream is a process's stdout or stderr: its pipe (or the pty
// master of a terminal) and the shim's connection.
type outputStream struct {
	slot
	name  string // for logs: "stdout of ..."
	src   *os.File
	owned bool          // src is a pipe end that closes with the stream, not a pty master
	done  chan struct{} // closed once the stream ended and src is closed
}

func newOutputStream(name string, src *os.File, owned bool) *outputStream {
	return &outputStream{slot: newSlot(), name: name, src: src, owned: owned, done: make(chan struct{})}
}

// run waits for the shim's connection, then moves the output to it until
// the pipe's EOF, and closes the connection.
func (o *outputStream) run(ctx context.Context) {
	defer close(o.done)
	if o.owned {
		defer o.src.Close()
	}
	t := time.NewTimer(AttachTimeout)
	defer t.Stop()
	var a *attachment
	select {
	case a = <-o.conn:
	case <-t.C:
		if a = o.giveUp(); a == nil {
			log.G(ctx).Warnf("%s: the host did not attach within %v; discarding it", o.name, AttachTimeout)
		}
	case <-o.abandon:
		if a = o.giveUp(); a != nil {
			a.close()
		}
		return
	}
	if a == nil {
		discard(o.src)
		return
	}
	defer a.close()
	// A removed process's stream stops at once: closing the connection
	// ends a write blocked on it.
	stop := whenClosed(o.abandon, func() { a.conn.Close() })
	defer stop()
	if err := sendOutput(a.conn, o.src, o.owned); err != nil {
		log.G(ctx).WithError(err).Debugf("%s: stream ended", o.name)
	}
	// At EOF the deferred close ends the stream: the shim reads what was
	// written and then EOF. A close, not a half-close: Cloud Hypervisor's
	// hybrid vsock passes a guest's half-close to the host only with the
	// full shutdown, and the data written before a close still goes out
	// ahead of it.
}

// whenClosed runs f if ch is closed before stop is called.
func whenClosed(ch <-chan struct{}, f func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			f()
		case <-done:
		}
	}()
	return func() { close(done) }
}

// discard reads src to its end, so that the process never blocks on it.
func discard(src *os.File) {
	buf := make([]byte, 64<<10)
	for {
		if _, err := src.Read(buf); err != nil {
			return
		}
	}
}

// sendOutput moves src to c until src ends (nil) or either fails, with
// one copy through a large buffer. A pipe's output is gathered a little
// first (gather). Not splice(2): on the guest's 6.1 kernel AF_VSOCK has no
// sendpage, and the generic fallback sends every pipe page as a vsock
// packet of its own, 4 KiB each; under TCG, where the cost is per packet,
// that measured slower than this copy (docs/performance.md).
func sendOutput(c net.Conn, src *os.File, pipe bool) error {
	buf := make([]byte, copyBufSize)
	var raw syscall.RawConn
	if pipe {
		raw, _ = src.SyscallConn()
	}
	for {
		n, err := src.Read(buf)
		if raw != nil && err == nil && n < gatherTarget {
			gather(raw)
			n += readNow(raw, buf[n:])
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			// EIO is how a pty master reports that the terminal's slave
			// side is gone: its EOF.
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.EIO) {
				return nil
			}
			return err
		}
	}
}

// gather gives a busy writer a moment to fill the pipe before the agent
// sends what it read: a process writing in small chunks (4 KiB is common)
// would otherwise make one vsock packet per chunk, and under emulation
// the cost is per packet and per wake-up, not per byte. It waits one timer
// tick, and more (up to gatherRounds) only while the pipe keeps growing
// and holds less than gatherTarget, each wait as long as the pipe's last
// growth says it needs to reach the target (gatherWait): output that
// stopped coming waits one tick.
func gather(pipe syscall.RawConn) {
	prev := -1
	wait := gatherTick
	for round := 0; round < gatherRounds; round++ {
		n := -1
		_ = pipe.Control(func(fd uintptr) {
			if v, err := unix.IoctlGetInt(int(fd), unix.TIOCINQ); err == nil {
				n = v
			}
		})
		if n < 0 || n >= gatherTarget || n == prev {
			return
		}
		if prev >= 0 {
			wait = gatherWait(wait, n-prev, gatherTarget-n)
		}
		prev = n
		time.Sleep(wait)
	}
}

// gatherWait is the next wait of gather: the time the pipe needs to gain
// missing bytes at the pace it gained grew (> 0) in the last wait, within
// [gatherTick, gatherMaxWait]. Fewer, longer waits than fixed ticks: each
// wake-up of the agent is a context switch away from the writer, which
// under emulation costs more than the copy.
func gatherWait(last time.Duration, grew, missing int) time.Duration {
	if grew <= 0 {
		return gatherMaxWait
	}
	w := time.Duration(float64(last) * float64(missing) / float64(grew))
	return min(max(w, gatherTick), gatherMaxWait)
}

// readNow reads what the pipe holds into p without waiting; 0 when it is
// empty or at EOF (the next read reports that).
func readNow(pipe syscall.RawConn, p []byte) int {
	n := 0
	_ = pipe.Read(func(fd uintptr) bool {
		m, err := unix.Read(int(fd), p)
		if err == nil && m > 0 {
			n = m
		}
		return true
	})
	return n
}

const (
	// gatherTarget is what a read must bring for its data to go without
	// gathering: one full vsock packet.
	gatherTarget = 64 << 10
	gatherRounds = 3
	gatherTick   = 500 * time.Microsecond
	// gatherMaxWait bounds one wait, so that output written in bulk is
	// held back at most gatherTick + 2*gatherMaxWait.
	gatherMaxWait = 4 * time.Millisecond
)

// inputStream is a process's stdin: the pipe's write end, or the pty
// master of a terminal.
type inputStream struct {
	slot
	name string
	dst  *os.File
	// owned is false for a pty master, which belongs to the console and
	// must stay open for output: the end of stdin then only stops writes.
	owned bool

	closeMu sync.Mutex // guards closed
	closed  bool
}

func newInputStream(name string, dst *os.File, owned bool) *inputStream {
	s := &inputStream{slot: newSlot(), name: name, dst: dst, owned: owned}
	// Not attached in time: the process reads EOF rather than waiting
	// forever for input that will not come.
	time.AfterFunc(AttachTimeout, func() {
		if s.expire() {
			_ = s.Close()
		}
	})
	return s
}

// receive copies the shim's stdin connection into the process's stdin
// until the shim half-closes it, then closes stdin. It returns when the
// stream is over.
func (s *inputStream) receive(ctx context.Context, c net.Conn) {
	stop := whenClosed(s.abandon, func() { c.Close() })
	defer stop()
	buf := make([]byte, stdinBufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := s.dst.Write(buf[:n]); werr != nil {
				// The process closed its stdin (EPIPE) or was removed: the
				// shim's writes fail once we close.
				log.G(ctx).WithError(werr).Debugf("%s: write", s.name)
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				log.G(ctx).WithError(err).Debugf("%s: read", s.name)
			}
			break
		}
	}
	_ = s.Close()
}

// Close closes stdin (the pipe) so that the process reads EOF. For a pty,
// it does nothing: the master stays open for output.
func (s *inputStream) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.owned {
		return s.dst.Close()
	}
	return nil
}
