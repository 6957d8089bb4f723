package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/socketpair"
	"github.com/vmpod/vmpod/stdiostream"
)

// sendOutput moves a pipe into a socket without losing or reordering a
// byte, through a pipe and socket much smaller than the data, both as a
// pipe (gathered) and as a pty master is (not).
func TestSendOutputNoLoss(t *testing.T) {
	want := make([]byte, 8<<20+123)
	_, _ = rand.Read(want)
	for _, pipe := range []bool{true, false} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		a, b := socketpair.Unix(t)
		go func() {
			// Small writes with pauses exercise the wait for an empty pipe.
			for p := want; len(p) > 0; {
				n := min(len(p), 100<<10)
				_, _ = w.Write(p[:n])
				p = p[n:]
				if len(p)%7 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			w.Close()
		}()
		errc := make(chan error, 1)
		go func() {
			err := sendOutput(a, r, pipe)
			a.CloseWrite()
			r.Close()
			errc <- err
		}()
		got, err := io.ReadAll(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("pipe %v: %v", pipe, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("pipe %v: got %d bytes, want %d (or they differ)", pipe, len(got), len(want))
		}
	}
}

// sendOutput waits while the socket is full and goes on when it drains.
func TestSendOutputWaitsForReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a, b := socketpair.Unix(t)
	want := make([]byte, 4<<20)
	_, _ = rand.Read(want)
	go func() {
		_, _ = w.Write(want)
		w.Close()
	}()
	done := make(chan error, 1)
	go func() {
		err := sendOutput(a, r, true)
		a.CloseWrite()
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("sendOutput ended while nobody read: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

// stdioEnv is a Server with one fake container whose init process has
// pipes for stdin, stdout and stderr, served by ServeStdio on a Unix
// socket.
type stdioEnv struct {
	sock          string
	p             *Process
	stdinR        *os.File // what the process would read
	stdoutW, errW *os.File // what the process would write
	stop          func()
	serveDone     chan error
	containerID   string
}

func newStdioEnv(t *testing.T, maxStreams int) *stdioEnv {
	t.Helper()
	s, err := New(Config{StateDir: t.TempDir(), MaxStreams: maxStreams})
	if err != nil {
		t.Fatal(err)
	}
	e := &stdioEnv{containerID: "c1"}
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	e.stdinR, e.stdoutW, e.errW = inR, outW, errW
	p := &Process{containerID: e.containerID, pumpsDone: make(chan struct{}), exited: make(chan struct{})}
	p.stdin = newInputStream("stdin of "+p.name(), inW, true)
	p.stdout = newOutputStream("stdout of "+p.name(), outR, true)
	p.stderr = newOutputStream("stderr of "+p.name(), errR, true)
	p.startPumps(context.Background())
	e.p = p
	s.containers[e.containerID] = &Container{id: e.containerID, init: p, execs: map[string]*Process{}}
	e.sock = filepath.Join(t.TempDir(), "stdio.sock")
	ln, err := net.Listen("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.serveDone = make(chan error, 1)
	go func() { e.serveDone <- s.ServeStdio(ctx, ln) }()
	e.stop = func() {
		p.closeIO()
		inR.Close()
		outW.Close()
		errW.Close()
		select {
		case <-p.pumpsDone:
		case <-time.After(10 * time.Second):
			t.Error("pumps did not stop")
		}
		cancel()
		select {
		case err := <-e.serveDone:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(10 * time.Second):
			t.Error("ServeStdio did not return")
		}
	}
	t.Cleanup(e.stop)
	return e
}

func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func (e *stdioEnv) dial(t *testing.T) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// attach dials and attaches; it returns the connection and the error of
// the agent's status.
func (e *stdioEnv) attach(t *testing.T, h stdiostream.Header) (*net.UnixConn, error) {
	t.Helper()
	c := e.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c, stdiostream.Attach(ctx, c, h)
}

// expectClosed checks that the agent closed c after its status: EOF, or
// a reset when the agent left bytes of a bad header unread.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after a refusal: read %d, %v; want EOF", n, err)
	}
}

func TestServeStdioAttach(t *testing.T) {
	e := newStdioEnv(t, 0)
	out, err := e.attach(t, stdiostream.Header{Kind: stdiostream.Stdout, ContainerID: e.containerID})
	if err != nil {
		t.Fatal(err)
	}
	in, err := e.attach(t, stdiostream.Header{Kind: stdiostream.Stdin, ContainerID: e.containerID})
	if err != nil {
		t.Fatal(err)
	}
	// A second attach of an attached stream is refused and closed.
	dup, err := e.attach(t, stdiostream.Header{Kind: stdiostream.Stdout, ContainerID: e.containerID})
	if !errors.Is(err, stdiostream.ErrAttached) {
		t.Fatalf("duplicate attach: %v, want %v", err, stdiostream.ErrAttached)
	}
	expectClosed(t, dup)

	// stdin: bytes reach the pipe; the half-close is its EOF.
	if _, err := in.Write([]byte("hello stdin")); err != nil {
		t.Fatal(err)
	}
	in.CloseWrite()
	_ = e.stdinR.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(e.stdinR); err != nil || string(got) != "hello stdin" {
		t.Fatalf("stdin read %q, %v", got, err)
	}
	// stdout: what the process wrote before and after the attach, then
	// EOF (the agent's half-close) once its pipe is closed.
	if _, err := e.stdoutW.Write([]byte("out")); err != nil {
		t.Fatal(err)
	}
	e.stdoutW.Close()
	_ = out.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(out); err != nil || string(got) != "out" {
		t.Fatalf("stdout read %q, %v", got, err)
	}
}

func TestServeStdioRefusals(t *testing.T) {
	e := newStdioEnv(t, 0)
	fds := openFDs(t)
	for _, c := range []struct {
		name string
		h    stdiostream.Header
		want error
	}{
		{"unknown container", stdiostream.Header{Kind: stdiostream.Stdout, ContainerID: "nope"}, stdiostream.ErrNoProcess},
		{"unknown exec", stdiostream.Header{Kind: stdiostream.Stdout, ContainerID: e.containerID, ExecID: "nope"}, stdiostream.ErrNoProcess},
	} {
		conn, err := e.attach(t, c.h)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
			continue
		}
		expectClosed(t, conn)
		conn.Close()
	}
	// A bad header is answered and closed.
	for name, b := range map[string][]byte{
		"magic":   []byte("xxxx\x01\x02c1\x00"),
		"kind":    []byte("vst1\x07\x02c1\x00"),
		"id":      []byte("vst1\x01\x02/.\x00"),
		"too big": append([]byte("vst1\x01\xff"), bytes.Repeat([]byte("a"), 255)...),
	} {
		conn := e.dial(t)
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
		var st [1]byte
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(conn, st[:]); err != nil || st[0] != stdiostream.StatusBadHeader {
			t.Errorf("%s: status %d, %v; want %d", name, st[0], err, stdiostream.StatusBadHeader)
			continue
		}
		expectClosed(t, conn)
		conn.Close()
	}
	// The agent closed its ends of the refused connections.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fds && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := openFDs(t); n > fds {
		t.Errorf("%d fds open, %d before: refused connections leak", n, fds)
	}
}

// Beyond MaxStreams, a connection is answered StatusTooMany and closed
// at once; a freed slot serves again.
func TestServeStdioTooMany(t *testing.T) {
	e := newStdioEnv(t, 2)
	held := []*net.UnixConn{e.dial(t), e.dial(t)} // no header yet: each holds a slot
	// The agent counts a connection once it accepted it.
	var conn *net.UnixConn
	var st [1]byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn = e.dial(t)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadFull(conn, st[:])
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no status for the third connection: %v", err)
		}
	}
	if st[0] != stdiostream.StatusTooMany {
		t.Fatalf("status %d, want %d", st[0], stdiostream.StatusTooMany)
	}
	expectClosed(t, conn)
	held[0].Close()
	held[1].Close()
	// Slots come back once the agent sees the closes.
	for {
		_, err := e.attach(t, stdiostream.Header{Kind: stdiostream.Stderr, ContainerID: e.containerID})
		if err == nil {
			break
		}
		if !errors.Is(err, stdiostream.ErrTooMany) || time.Now().After(deadline) {
			t.Fatalf("attach after the held connections closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gatherWait waits as long as the pipe's last growth says it needs to
// reach the target, within its bounds.
func TestGatherWait(t *testing.T) {
	for _, c := range []struct {
		name          string
		last          time.Duration
		grew, missing int
		want          time.Duration
	}{
		{"a quarter of the way: three times as long", time.Millisecond, 16 << 10, 48 << 10, 3 * time.Millisecond},
		{"a slow writer: bounded", time.Millisecond, 1 << 10, 63 << 10, gatherMaxWait},
		{"almost there: at least a tick", time.Millisecond, 60 << 10, 1, gatherTick},
		{"no growth: bounded", time.Millisecond, 0, 64 << 10, gatherMaxWait},
	} {
		if got := gatherWait(c.last, c.grew, c.missing); got != c.want {
			t.Errorf("%s: gatherWait(%v, %d, %d) = %v, want %v", c.name, c.last, c.grew, c.missing, got, c.want)
		}
	}
}
