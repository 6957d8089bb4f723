package vsock_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock"
)

// fakeHybrid serves one connection on a Unix socket with handle.
func fakeHybrid(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hybrid.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handle(c)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return path
}

func readConnect(t *testing.T, c net.Conn) string {
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	return string(buf[:n])
}

// TestDialHybridKeepsGuestBytes: the guest's first bytes arrive in the
// same segment as the OK line and must not be lost.
func TestDialHybridKeepsGuestBytes(t *testing.T) {
	got := make(chan string, 1)
	path := fakeHybrid(t, func(c net.Conn) {
		got <- readConnect(t, c)
		c.Write([]byte("OK 1073741824\nguest says hi"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := vsock.DialHybrid(ctx, path, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line := <-got; line != "CONNECT 1024\n" {
		t.Fatalf("handshake %q", line)
	}
	data, err := io.ReadAll(c)
	if err != nil || string(data) != "guest says hi" {
		t.Fatalf("after the handshake read %q, %v", data, err)
	}
}

func TestDialHybridRejectsBadReplies(t *testing.T) {
	for name, reply := range map[string]string{
		"not ok":       "ERR no such port\n",
		"bad port":     "OK port\n",
		"endless line": strings.Repeat("O", 1000),
		"hangup":       "OK 12",
	} {
		t.Run(name, func(t *testing.T) {
			path := fakeHybrid(t, func(c net.Conn) {
				readConnect(t, c)
				c.Write([]byte(reply))
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if c, err := vsock.DialHybrid(ctx, path, 1); err == nil {
				c.Close()
				t.Fatalf("reply %q accepted", reply)
			}
		})
	}
}

func TestDialHybridHonoursContext(t *testing.T) {
	release := make(chan struct{})
	path := fakeHybrid(t, func(c net.Conn) {
		readConnect(t, c)
		<-release // never answers
	})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := vsock.DialHybrid(ctx, path, 1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial against a silent server: %v, want DeadlineExceeded", err)
	}
}

func TestBackendSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vsock.sock")
	if _, err := vsock.NewBackend(path, 2); err == nil {
		t.Fatal("the host's CID accepted for a guest")
	}
	b, err := vsock.NewBackend(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v: want a socket with mode 0600", fi, err)
	}
	// A frontend that speaks garbage ends this backend's Serve with an
	// error.
	served := make(chan error, 1)
	go func() { served <- b.Serve(context.Background()) }()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	select {
	case err := <-served:
		if err == nil {
			t.Fatal("garbage on the vhost-user socket gave no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after garbage")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := b.Dial(ctx, 1); err == nil {
		t.Fatal("dial on a closed backend succeeded")
	}
}

func TestBackendCloseBeforeQEMU(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vsock.sock")
	b, err := vsock.NewBackend(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	b.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}

// TestServeHybridRefusesOtherPorts: given ports, ServeHybrid closes a
// connection asking for any other before reaching the guest (there is
// none here: a Dial would wait for one).
func TestServeHybridRefusesOtherPorts(t *testing.T) {
	dir := t.TempDir()
	b, err := vsock.NewBackend(filepath.Join(dir, "vsock.sock"), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	path := filepath.Join(dir, "hybrid.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.ServeHybrid(ctx, ln, 1024) }()
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	if _, err := vsock.DialHybrid(dctx, path, 22); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("CONNECT 22 with only 1024 offered: %v, want a refusal", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeHybrid: %v", err)
	}
}
