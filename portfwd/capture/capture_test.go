package capture_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/network"
	"github.com/vmpod/vmpod/portfwd"
	"github.com/vmpod/vmpod/portfwd/capture"
)

// TestForwardThroughCapture wires the real pieces without a VM: a network
// namespace captured by sk_lookup, the Forwarder, and the guest's Serve
// (here on the host, over a Unix socket instead of vsock) dialing a
// server on the host's loopback. A client in the namespace dials
// 127.0.0.1:PORT as containerd does.
func TestForwardThroughCapture(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root (network namespaces, eBPF)")
	}
	ns := filepath.Join(t.TempDir(), "netns")
	if err := network.NewNamespace(ns); err != nil {
		require.Missingf(t, "network namespace: %v", err)
	}
	t.Cleanup(func() { network.RemoveNamespace(ns) })
	c, err := capture.Loopback(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The "guest": Serve on a Unix socket, its loopback the host's.
	sock := filepath.Join(t.TempDir(), "guest.sock")
	gl, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- portfwd.Serve(ctx, gl) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	f := portfwd.NewForwarder(context.Background(), c.Listeners, dial, 2)
	defer f.Close()

	// An echo server that upper-cases nothing: it answers what it got,
	// once the client closed its half, proving half-close crosses.
	srv, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	release := make(chan struct{})
	go func() {
		for {
			conn, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				<-release
				b, _ := io.ReadAll(conn)
				conn.Write(append([]byte("got:"), b...))
			}()
		}
	}()
	port := srv.Addr().(*net.TCPAddr).Port

	t.Run("HalfCloseTwoAtOnce", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg := "hello " + strconv.Itoa(i)
				got, err := exchange(ns, port, msg)
				if err != nil {
					t.Error(err)
					return
				}
				if got != "got:"+msg {
					t.Errorf("client %d got %q, want %q", i, got, "got:"+msg)
				}
			}()
		}
		time.Sleep(200 * time.Millisecond)
		close(release)
		wg.Wait()
	})
	t.Run("IPv6", func(t *testing.T) {
		// ::1 in the namespace reaches the guest's 127.0.0.1 when nothing
		// listens on its ::1, as containerd falls back between the two.
		if len(c.Listeners) < 2 {
			require.Missing(t, "IPv6 is disabled: the namespace has no ::1")
		}
		conn, err := dialIn(ns, "tcp6", "[::1]", port)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		conn.Write([]byte("six"))
		conn.(interface{ CloseWrite() error }).CloseWrite()
		b, err := io.ReadAll(conn)
		if err != nil || string(b) != "got:six" {
			t.Fatalf("got %q, %v", b, err)
		}
	})
	t.Run("Refused", func(t *testing.T) {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if err := resetIn(ns, closed); err != nil {
			t.Fatalf("a refused port in the guest: %v", err)
		}
	})
	t.Run("Limit", func(t *testing.T) {
		// A server that accepts and holds: two forwards fill the limit.
		hold, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hold.Close()
		accepted := make(chan net.Conn, 3)
		go func() {
			for {
				c, err := hold.Accept()
				if err != nil {
					return
				}
				select {
				case accepted <- c:
				default:
					c.Close()
				}
			}
		}()
		hp := hold.Addr().(*net.TCPAddr).Port
		for i := range 2 {
			c, err := dialIn(ns, "tcp4", "127.0.0.1", hp)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case g := <-accepted:
				defer g.Close()
			case <-time.After(10 * time.Second):
				t.Fatalf("forward %d never reached the server", i)
			}
		}
		if err := resetIn(ns, hp); err != nil {
			t.Fatalf("a third forward with a limit of two: %v", err)
		}
	})
	t.Run("CloseEndsForwards", func(t *testing.T) {
		hold, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hold.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			for {
				c, err := hold.Accept()
				if err != nil {
					return
				}
				select {
				case accepted <- c:
				default:
					c.Close()
				}
			}
		}()
		// The Limit test's forwards may still be ending: retry until one
		// gets a slot.
		var c net.Conn
		deadline := time.Now().Add(10 * time.Second)
		for c == nil {
			conn, err := dialIn(ns, "tcp4", "127.0.0.1", hold.Addr().(*net.TCPAddr).Port)
			if err == nil {
				select {
				case g := <-accepted:
					defer g.Close()
					c = conn
					continue
				case <-time.After(time.Second):
				}
				conn.Close()
			}
			if time.Now().After(deadline) {
				t.Fatal("no forward reached the server")
			}
		}
		defer c.Close()
		closed := make(chan error, 1)
		go func() { closed <- f.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return with a forward open")
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("the client's connection is still open after Close")
		}
	})
	t.Run("CloseRemovesTable", func(t *testing.T) {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		nsf, err := os.Open(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer nsf.Close()
		conn, err := nftables.New(nftables.WithNetNSFd(int(nsf.Fd())))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseLasting()
		if _, err := conn.ListTableOfFamily(capture.TableName, nftables.TableFamilyINet); err == nil {
			t.Errorf("table inet %s still in the namespace after Close", capture.TableName)
		}
	})
}

// resetIn dials 127.0.0.1:port in the namespace and expects the
// connection reset: at once (connect may already see it) or on the first
// read.
func resetIn(ns string, port int) error {
	c, err := dialIn(ns, "tcp4", "127.0.0.1", port)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("read: %v, want a reset", err)
	}
	return nil
}

// exchange dials 127.0.0.1:port in the namespace, writes msg, closes its
// write half and reads to the end.
func exchange(ns string, port int, msg string) (string, error) {
	conn, err := dialIn(ns, "tcp4", "127.0.0.1", port)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return "", err
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	_, err = io.Copy(&buf, conn)
	return buf.String(), err
}

// dialIn dials host:port from inside the namespace at ns.
func dialIn(ns, network, host string, port int) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in ns
		f, err := os.Open(ns)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := net.DialTimeout(network, host+":"+strconv.Itoa(port), 5*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
