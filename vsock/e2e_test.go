package vsock_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock"
	"github.com/vmpod/vmpod/vsock/device"
	"github.com/vmpod/vmpod/vsock/internal/pattern"
)

const streamBytes = 64 << 20

// TestVM boots one real guest on the Go backend and runs every end-to-end
// check against it.
func TestVM(t *testing.T) {
	vm := startVM(t, q35)
	t.Run("Echo", func(t *testing.T) { testEcho(t, vm) })
	t.Run("StreamToGuest", func(t *testing.T) { testStreamToGuest(t, vm) })
	t.Run("StreamFromGuestWithBackpressure", func(t *testing.T) { testStreamFromGuest(t, vm) })
	t.Run("SixteenConnections", func(t *testing.T) { testManyConns(t, vm, 16) })
	t.Run("GuestDialsHost", func(t *testing.T) { testGuestDials(t, vm) })
	t.Run("GuestDialUnknownPortIsReset", func(t *testing.T) { testGuestDialUnknown(t, vm) })
	t.Run("DialUnknownGuestPortIsRefused", func(t *testing.T) { testDialRefused(t, vm) })
	t.Run("Hybrid", func(t *testing.T) { testHybrid(t, vm) })
	t.Run("PauseResume", func(t *testing.T) { testPauseResume(t, vm) })
	t.Run("NoConnectionsLeft", func(t *testing.T) { testDrained(t, vm) })
}

// TestMicrovm checks the MMIO flavour of the device on QEMU's microvm.
func TestMicrovm(t *testing.T) {
	vm := startVM(t, microvm)
	testEcho(t, vm)
	testManyConns(t, vm, 4)
}

func testEcho(t *testing.T, vm *testVM) {
	c := vm.dial(t, portEcho)
	defer c.Close()
	msg := []byte("hello, guest\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func patternSum(seed uint64, n int64) string {
	h := sha256.New()
	io.CopyN(h, pattern.New(seed), n)
	return hex.EncodeToString(h.Sum(nil))
}

// testStreamToGuest sends 64 MiB through one connection; the guest
// answers with the length and checksum it received.
func testStreamToGuest(t *testing.T, vm *testVM) {
	c := vm.dial(t, portSink)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	const seed = 1
	if n, err := io.CopyN(c, pattern.New(seed), streamBytes); err != nil {
		t.Fatalf("sent %d bytes: %v", n, err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	expectLine(t, c, fmt.Sprintf("%d %s", streamBytes, patternSum(seed, streamBytes)))
}

// testStreamFromGuest receives 64 MiB through one connection and pauses
// reading in the middle: the guest must stop at the credit it was given
// (the backend never holds more than one buffer for the connection) and
// resume when the host reads again.
func testStreamFromGuest(t *testing.T, vm *testVM) {
	c := vm.dial(t, portSource)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	const seed = 2
	fmt.Fprintf(c, "%d %d\n", streamBytes, seed)
	h := sha256.New()
	if _, err := io.CopyN(h, c, 8<<20); err != nil {
		t.Fatal(err)
	}
	// Stop reading: the guest must stall once it has used the credit it
	// was given. Bytes the host consumed but has not yet reported (less
	// than half the buffer) are credit the guest cannot see, so the stall
	// comes with between half and all of the buffer held.
	var s device.Stats
	stable := 0
	for i := 0; i < 200 && stable < 5; i++ {
		time.Sleep(100 * time.Millisecond)
		s2 := vm.b.Stats()
		if s2.RecvBuffered == s.RecvBuffered && s2.RecvBuffered > 0 {
			stable++
		} else {
			stable = 0
		}
		s = s2
	}
	if stable < 5 {
		t.Fatalf("guest did not stall while the host did not read (buffered %d)", s.RecvBuffered)
	}
	if s.RecvBuffered < device.DefaultBufferSize/2 || s.RecvBuffered > device.DefaultBufferSize {
		t.Fatalf("stalled with %d bytes buffered, want between %d and %d", s.RecvBuffered, device.DefaultBufferSize/2, device.DefaultBufferSize)
	}
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read after %d more bytes: %v", n, err)
	}
	if got := 8<<20 + n; got != streamBytes {
		t.Fatalf("received %d bytes, want %d", got, streamBytes)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), patternSum(seed, streamBytes); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
	if p := vm.b.Stats().PeakRecvBuffered; p > device.DefaultBufferSize {
		t.Fatalf("peak buffered %d exceeds the %d-byte bound", p, device.DefaultBufferSize)
	}
}

// testManyConns runs n echo connections at once, each with its own data.
func testManyConns(t *testing.T, vm *testVM, n int) {
	const size = 512 << 10
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := vm.dial(t, portEcho)
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Minute))
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := io.CopyN(c, pattern.New(uint64(100+i)), size); err != nil {
				errs <- fmt.Errorf("conn %d write: %w", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- fmt.Errorf("conn %d read: %w", i, err)
				return
			}
			want := make([]byte, size)
			pattern.New(uint64(100 + i)).Read(want)
			if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("conn %d: echoed data differs", i)
			}
		}()
	}
	if s := vm.b.Stats(); s.Conns < n {
		t.Errorf("%d connections open, want at least %d", s.Conns, n)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testGuestDials has the guest connect to a host listener and send data.
func testGuestDials(t *testing.T, vm *testVM) {
	const port, size, seed = 6000, 4 << 20, 3
	l, err := vm.b.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctl := vm.dial(t, portDialer)
	defer ctl.Close()
	fmt.Fprintf(ctl, "%d %d %d\n", port, size, seed)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("guest connection not accepted within 30s")
	}
	defer c.Close()
	expectLine(t, ctl, "OK")
	if c.RemoteAddr().(device.Addr).CID != guestCID {
		t.Errorf("remote address %v, want CID %d", c.RemoteAddr(), guestCID)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil || n != size {
		t.Fatalf("received %d bytes (%v), want %d", n, err, size)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), patternSum(seed, size); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
}

// testGuestDialUnknown: the guest connects to a host port nobody listens
// on and must see a reset.
func testGuestDialUnknown(t *testing.T, vm *testVM) {
	ctl := vm.dial(t, portDialer)
	defer ctl.Close()
	fmt.Fprintf(ctl, "%d 0 0\n", 7777)
	got := readLine(t, ctl)
	if got != "ERR ECONNRESET" && got != "ERR ECONNREFUSED" {
		t.Fatalf("guest dial of an unused host port: %q, want ERR ECONNRESET or ECONNREFUSED", got)
	}
}

func testDialRefused(t *testing.T, vm *testVM) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := vm.b.Dial(ctx, 9999)
	if err == nil {
		c.Close()
		t.Fatal("dial of a guest port nobody listens on succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("dial was not refused, it timed out: %v", err)
	}
}

// testHybrid goes through ServeHybrid and DialHybrid.
func testHybrid(t *testing.T, vm *testVM) {
	path := filepath.Join(vm.dir, "hybrid.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- vm.b.ServeHybrid(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeHybrid: %v", err)
		}
	}()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, err := vsock.DialHybrid(dctx, path, portEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := bytes.Repeat([]byte("hybrid "), 1000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("hybrid echo differs")
	}
	if _, err := vsock.DialHybrid(dctx, path, 9999); err == nil {
		t.Fatal("hybrid dial of an unused guest port succeeded")
	}
}

// testDrained: once every connection is closed, the guest resets them and
// the backend holds nothing.
func testDrained(t *testing.T, vm *testVM) {
	var s device.Stats
	for i := 0; i < 100; i++ {
		s = vm.b.Stats()
		if s.Conns == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%d connections still open after all were closed (%+v)", s.Conns, s)
}

// testPauseResume pauses the VM (QEMU stops the vrings through the
// backend) and resumes it: an open connection keeps working, and data
// written while paused arrives after.
func testPauseResume(t *testing.T, vm *testVM) {
	c := vm.dial(t, portEcho)
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	vm.qmp(t, "stop")
	msg := []byte("written while paused")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	vm.qmp(t, "cont")
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo after resume: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo after resume %q, want %q", got, msg)
	}
}
