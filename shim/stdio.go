package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	cprocess "github.com/containerd/containerd/pkg/process"
	"github.com/containerd/containerd/pkg/stdio"
	"github.com/containerd/fifo"
	"github.com/containerd/log"
)

// hostIO is one process's stdio on the host side: containerd's fifos, a
// logging binary (binary://) or a file (file://). A nil writer discards.
type hostIO struct {
	stdin  io.ReadCloser
	stdout io.Writer
	stderr io.Writer
	// closers run once the output copies are over.
	closers []io.Closer
	// streamClosers close one output fifo as soon as its stream reached
	// EOF: a client that reads to EOF (CRI's exec) must see it end when
	// the process's output ends, not when the process is deleted.
	streamClosers map[string][]io.Closer
}

// openHostIO opens the host end of s for process id. Nothing stays open
// when it fails.
//
// Under a terminal there is one output stream, and containerd's clients
// make no stderr fifo for it (cio.WithTerminal) while still naming one:
// stderr is ignored, as runc's shim does.
func openHostIO(ctx context.Context, id string, s stdio.Stdio) (_ *hostIO, retErr error) {
	h := &hostIO{}
	if s.Terminal {
		s.Stderr = ""
	}
	defer func() {
		if retErr != nil {
			h.close()
		}
	}()
	if s.Stdin != "" {
		f, err := fifo.OpenFifo(context.Background(), s.Stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s: %w", s.Stdin, err)
		}
		h.stdin = f
	}
	if s.Stdout == "" && s.Stderr == "" {
		return h, nil
	}
	u, err := url.Parse(s.Stdout)
	if err != nil {
		return nil, fmt.Errorf("parse stdout uri %q: %w", s.Stdout, err)
	}
	switch u.Scheme {
	case "", "fifo":
		if h.stdout, err = h.openFifo(ctx, "stdout", s.Stdout); err != nil {
			return nil, err
		}
		if h.stderr, err = h.openFifo(ctx, "stderr", s.Stderr); err != nil {
			return nil, err
		}
	case "binary":
		if err := h.openBinary(ctx, id, u); err != nil {
			return nil, err
		}
	case "file":
		if err := h.openFile(u.Path); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown stdio scheme %q in %q", u.Scheme, s.Stdout)
	}
	return h, nil
}

// openFifo opens a fifo for writing, and also for reading so that writes do
// not fail while no client is attached (as runc's shim does).
func (h *hostIO) openFifo(ctx context.Context, stream, path string) (io.Writer, error) {
	if path == "" {
		return nil, nil
	}
	path = trimScheme(path)
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s for writing: %w", path, err)
	}
	h.closers = append(h.closers, w)
	r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s for reading: %w", path, err)
	}
	h.closers = append(h.closers, r)
	if h.streamClosers == nil {
		h.streamClosers = make(map[string][]io.Closer)
	}
	h.streamClosers[stream] = append(h.streamClosers[stream], w, r)
	return w, nil
}

// closeStream closes the fifo of an output stream that reached EOF, so
// that its reader sees EOF too. Other kinds of output close with the
// process.
func (h *hostIO) closeStream(stream string) {
	for _, c := range h.streamClosers[stream] {
		c.Close()
	}
}

func trimScheme(p string) string {
	if u, err := url.Parse(p); err == nil && u.Scheme == "fifo" {
		return u.Path
	}
	return p
}

// openBinary starts containerd's logging-binary protocol through the helper
// runc's shim uses: the binary reads our output on two pipes.
func (h *hostIO) openBinary(ctx context.Context, id string, u *url.URL) error {
	bio, err := cprocess.NewBinaryIO(ctx, id, u)
	if err != nil {
		return fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	h.closers = append(h.closers, bio)
	// The helper hands out its pipes only through Set.
	var cmd exec.Cmd
	bio.Set(&cmd)
	h.stdout, h.stderr = cmd.Stdout, cmd.Stderr
	return nil
}

func (h *hostIO) openFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create directory of log file %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open log file %s: %w", path, err)
	}
	h.closers = append(h.closers, f)
	// One file for both streams; the mutex keeps chunks whole.
	w := &lockedWriter{w: f}
	h.stdout, h.stderr = w, w
	return nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (h *hostIO) close() {
	if h.stdin != nil {
		h.stdin.Close()
	}
	for _, c := range h.closers {
		c.Close()
	}
}

// sink writes to w until w fails (the client went away), then discards, so
// that the guest process never blocks on output nobody reads.
type sink struct {
	w      io.Writer
	failed atomic.Bool
}

func (s *sink) Write(ctx context.Context, p []byte) {
	if s.w == nil || s.failed.Load() {
		return
	}
	if _, err := s.w.Write(p); err != nil {
		if !errors.Is(err, os.ErrClosed) && !errors.Is(err, syscall.EPIPE) {
			log.G(ctx).WithError(err).Warn("write process output; discarding the rest")
		}
		s.failed.Store(true)
	}
}
