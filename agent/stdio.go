package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// DefaultOutputLimit is how much output of one stream the agent holds for
// the host before it stops reading the process's pipe.
const DefaultOutputLimit = 1 << 20

// releaseAbove is the capacity above which a drained buffer frees its
// memory.
const releaseAbove = 64 << 10

// errBufferClosed is returned to a writer whose buffer was abandoned.
var errBufferClosed = errors.New("output buffer closed")

// outputBuffer holds one output stream of a process between the pipe and
// the host's ReadStdout/ReadStderr calls. It never holds more than limit
// bytes: a writer blocks while it is full, so that a process that writes
// faster than the host reads is slowed down by its pipe (back-pressure)
// instead of growing the agent's memory.
type outputBuffer struct {
	limit int

	mu     sync.Mutex    // guards the fields below
	data   bytes.Buffer  // bytes written and not read yet
	eof    bool          // the writer is done: nothing more will be added
	closed bool          // the buffer was abandoned: writes fail, reads see EOF
	wake   chan struct{} // closed and replaced on every change, to wake waiters
}

func newOutputBuffer(limit int) *outputBuffer {
	return &outputBuffer{limit: limit, wake: make(chan struct{})}
}

// broadcast wakes every waiter; b.mu must be held.
func (b *outputBuffer) broadcast() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// Write appends p, blocking while the buffer is full. It fails only when
// the buffer was closed.
func (b *outputBuffer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return written, errBufferClosed
		}
		space := b.limit - b.data.Len()
		if space == 0 {
			wake := b.wake
			b.mu.Unlock()
			<-wake
			continue
		}
		n := min(space, len(p))
		b.data.Write(p[:n])
		b.broadcast()
		b.mu.Unlock()
		written += n
		p = p[n:]
	}
	return written, nil
}

// CloseWrite marks the end of the stream: once drained, reads report EOF.
func (b *outputBuffer) CloseWrite() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.eof = true
	b.broadcast()
}

// drained reports whether the stream ended and everything was read.
func (b *outputBuffer) drained() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed || (b.eof && b.data.Len() == 0)
}

// Close abandons the buffer: pending data is dropped, a blocked writer
// returns errBufferClosed and readers see EOF.
func (b *outputBuffer) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.data = bytes.Buffer{}
	b.broadcast()
}

// Read returns at most n bytes, waiting until at least one byte is there or
// the stream ended. eof is true only when the stream ended and nothing is
// left to read, so that the last data and the EOF may come together.
func (b *outputBuffer) Read(ctx context.Context, n int) (data []byte, eof bool, err error) {
	for {
		b.mu.Lock()
		if b.data.Len() > 0 {
			data = make([]byte, min(n, b.data.Len()))
			b.data.Read(data)
			eof = b.eof && b.data.Len() == 0
			// Give the memory back once drained: many exited processes
			// may be kept, each with a buffer that once held a lot.
			if b.data.Len() == 0 && (b.eof || b.data.Cap() > releaseAbove) {
				b.data = bytes.Buffer{}
			}
			b.broadcast()
			b.mu.Unlock()
			return data, eof, nil
		}
		if b.eof || b.closed {
			b.mu.Unlock()
			return nil, true, nil
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// pump copies r into b until r ends or b is closed, then marks b's end and
// closes r. done is closed when it returns.
func pump(r io.ReadCloser, b *outputBuffer, done chan<- struct{}) {
	defer close(done)
	defer r.Close()
	defer b.CloseWrite()
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := b.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EIO is how a pty master reports that the slave side is gone.
			return
		}
	}
}

// stdinWriter is the host's end of a process's stdin: a pipe, or the pty
// master for a terminal.
type stdinWriter struct {
	mu     sync.Mutex // serialises writes and guards closed
	w      *os.File
	closed bool
	// owned is false for a pty master, which belongs to the console and
	// must stay open for output; CloseStdin then only stops writes.
	owned bool
}

// Write writes data, giving up when ctx ends; it reports how much was
// written.
func (s *stdinWriter) Write(ctx context.Context, data []byte) (int, error) {
	if len(data) > MaxStdinWrite {
		return 0, fmt.Errorf("stdin write of %d bytes, more than %d: %w", len(data), MaxStdinWrite, errdefs.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, fmt.Errorf("stdin is closed: %w", errdefs.ErrFailedPrecondition)
	}
	// The file is non-blocking under Go's poller, so a deadline interrupts
	// a write to a process that does not read its stdin.
	stop := context.AfterFunc(ctx, func() { _ = s.w.SetWriteDeadline(time.Now()) })
	defer func() {
		if !stop() {
			_ = s.w.SetWriteDeadline(time.Time{})
		}
	}()
	n, err := s.w.Write(data)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
			return n, ctx.Err()
		case errors.Is(err, syscall.EPIPE):
			return n, fmt.Errorf("stdin reader is gone: %w", errdefs.ErrFailedPrecondition)
		}
		return n, fmt.Errorf("write stdin: %w", err)
	}
	return n, nil
}

// Close closes stdin (the pipe) so that the process reads EOF. For a pty,
// it only refuses further writes.
func (s *stdinWriter) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.owned {
		return s.w.Close()
	}
	return nil
}
