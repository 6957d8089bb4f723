package device_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock/device"
	"github.com/vmpod/vmpod/vsock/internal/testdriver"
	"github.com/vmpod/vmpod/vsock/virtq"
)

func listen(t *testing.T, d *device.Device, port uint32) net.Listener {
	t.Helper()
	l, err := d.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestGuestConnectsAndExchangesData(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1234)
	c := g.connect(l, 5555, 1234, 1<<20)
	if got := c.RemoteAddr().(device.Addr); got.CID != cid || got.Port != 5555 {
		t.Errorf("remote address %v", got)
	}

	g.send(device.Header{SrcPort: 5555, DstPort: 1234, Op: device.OpRW, BufAlloc: 1 << 20}, []byte("hello"))
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("host read %q, %v", buf[:n], err)
	}

	if _, err := c.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	p := g.expect(device.OpRW)
	if string(p.Data) != "world" || p.FwdCnt != 5 || p.BufAlloc != device.DefaultBufferSize {
		t.Fatalf("guest got %v %q, want 5 bytes acknowledged and buf_alloc %d", p.Header, p.Data, device.DefaultBufferSize)
	}

	// The guest closes: SHUTDOWN both ways. The host resets, as Linux does,
	// and the reader sees EOF.
	g.send(device.Header{SrcPort: 5555, DstPort: 1234, Op: device.OpShutdown, Flags: device.ShutdownRcv | device.ShutdownSend}, nil)
	g.expect(device.OpRst)
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("read after guest shutdown: %v, want EOF", err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after the guest shut down succeeded")
	}
	if s := g.dev.Stats(); s.Conns != 0 {
		t.Fatalf("%d connections left", s.Conns)
	}
	// Guest to host: REQUEST, RW "hello", SHUTDOWN; host to guest:
	// RESPONSE, RW "world", RST (credit updates may come on top).
	cs := g.dev.Counters()
	if cs.TXPackets != 3 || cs.TXBytes != 5 || cs.RXPackets < 3 || cs.RXBytes != 5 ||
		cs.ResetsSent != 1 || cs.ResetsReceived != 0 || cs.ConnsOpened != 1 {
		t.Errorf("counters %+v, want 3 packets and 5 bytes from the guest, at least 3 packets and 5 bytes to it, 1 reset sent, 1 connection", cs)
	}
}

func TestUnknownPortGetsReset(t *testing.T) {
	g := newGuest(t, device.Options{})
	g.send(device.Header{SrcPort: 7, DstPort: 4321, Op: device.OpRequest}, nil)
	p := g.expect(device.OpRst)
	if p.SrcPort != 4321 || p.DstPort != 7 {
		t.Fatalf("reset %v for the wrong ports", p.Header)
	}
	// Data for a connection that does not exist gets a reset too.
	g.send(device.Header{SrcPort: 8, DstPort: 4321, Op: device.OpRW}, []byte("x"))
	g.expect(device.OpRst)
	// A reset for an unknown connection is not answered.
	g.send(device.Header{SrcPort: 9, DstPort: 4321, Op: device.OpRst}, nil)
	g.expectNothing(200 * time.Millisecond)
	if cs := g.dev.Counters(); cs.ResetsSent != 2 || cs.ResetsReceived != 1 || cs.ConnsOpened != 0 {
		t.Errorf("counters %+v, want 2 resets sent, 1 received, no connection", cs)
	}
}

func TestMalformedPacketsGetReset(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1)
	for i, tc := range []struct {
		h          device.Header
		resetsConn bool
	}{
		{device.Header{Op: device.OpRW, Len: 100}, true},                      // claims more data than the chain has
		{device.Header{Op: device.OpRW, Len: device.MaxPacketData + 1}, true}, // too long
		{device.Header{Op: device.OpRequest, Type: 2}, true},                  // SEQPACKET was not offered
		{device.Header{Op: 99}, true},                                         // unknown op
		{device.Header{Op: device.OpRequest, DstCID: 77}, false},              // not for the host: answered, connection untouched
	} {
		port := uint32(100 + i)
		c := g.connect(l, port, 1, 1<<20)
		h := tc.h
		h.SrcPort, h.DstPort = port, 1
		g.send(h, []byte("short"))
		// The reset comes from the CID the guest asked.
		src := h.DstCID
		if src == 0 {
			src = device.HostCID
		}
		g.expectFrom(device.OpRst, src)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		if tc.resetsConn && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("packet %d (%v): host read %v, want ECONNRESET", i, h, err)
		}
		if !tc.resetsConn && !isTimeout(err) {
			t.Errorf("packet %d (%v): host read %v, want the connection alive", i, h, err)
		}
	}
	// A packet from another CID is dropped without an answer.
	g.send(device.Header{SrcCID: 42, SrcPort: 1, DstPort: 1, Op: device.OpRequest}, nil)
	g.expectNothing(200 * time.Millisecond)
}

func TestBadChainsAreReturnedEmpty(t *testing.T) {
	g := newGuest(t, device.Options{})
	for _, bufs := range [][]testdriver.Buf{
		{{Addr: 0x10, Len: 44}}, // below guest memory
		{{Addr: testdriver.GuestBase + testdriver.MemSize - 8, Len: 44}}, // crosses its end
		{{Addr: g.txHdr, Len: 10}},                                       // shorter than a header
		{{Addr: g.txHdr, Len: 44, Write: true}},                          // device-writable on tx
	} {
		u := g.sendChain(bufs)
		if len(u) != 1 || u[0].Len != 0 {
			t.Fatalf("bad chain %v used as %v, want one entry of length 0", bufs, u)
		}
	}
	// The queue still works.
	g.send(device.Header{SrcPort: 7, DstPort: 4321, Op: device.OpRequest}, nil)
	g.expect(device.OpRst)
}

func TestGuestExceedingCreditIsReset(t *testing.T) {
	g := newGuest(t, device.Options{BufferSize: device.MaxPacketData})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20)
	chunk := bytes.Repeat([]byte{'a'}, device.MaxPacketData/2)
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRW}, chunk)
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRW}, chunk)
	// The buffer is full: one more byte is more than the credit granted.
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRW}, []byte("b"))
	g.expect(device.OpRst)
	if s := g.dev.Stats(); s.PeakRecvBuffered > device.MaxPacketData {
		t.Fatalf("buffered %d bytes, more than the %d granted", s.PeakRecvBuffered, device.MaxPacketData)
	}
	// What was received within the credit is still readable; then the reset.
	got, err := io.ReadAll(c)
	if len(got) != device.MaxPacketData || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %d bytes and %v, want %d and ECONNRESET", len(got), err, device.MaxPacketData)
	}
}

func TestReadingSendsCreditUpdate(t *testing.T) {
	g := newGuest(t, device.Options{BufferSize: device.MaxPacketData})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20)
	data := bytes.Repeat([]byte{'z'}, device.MaxPacketData)
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRW}, data)
	g.expectNothing(100 * time.Millisecond) // nothing consumed yet
	if _, err := io.ReadFull(c, make([]byte, len(data))); err != nil {
		t.Fatal(err)
	}
	p := g.expect(device.OpCreditUpdate)
	if p.FwdCnt != uint32(len(data)) || p.BufAlloc != device.MaxPacketData {
		t.Fatalf("credit update %v, want fwd_cnt %d", p.Header, len(data))
	}
	// Asked for credit, the device answers.
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpCreditRequest}, nil)
	if p := g.expect(device.OpCreditUpdate); p.FwdCnt != uint32(len(data)) {
		t.Fatalf("credit update %v", p.Header)
	}
}

func TestHostWritesRespectGuestCredit(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1000)
	data := bytes.Repeat([]byte{'w'}, 5000)
	go c.Write(data)
	got := 0
	for got < 1000 {
		p := g.expect(device.OpRW)
		got += len(p.Data)
	}
	if got != 1000 {
		t.Fatalf("guest got %d bytes with 1000 of credit", got)
	}
	g.expectNothing(200 * time.Millisecond)
	// The guest consumed it all: 1000 more may come.
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpCreditUpdate, BufAlloc: 1000, FwdCnt: 1000}, nil)
	for got < 2000 {
		got += len(g.expect(device.OpRW).Data)
	}
	if got != 2000 {
		t.Fatalf("guest got %d bytes with 2000 of credit", got)
	}
}

func TestMaxConnections(t *testing.T) {
	g := newGuest(t, device.Options{MaxConns: 2})
	l := listen(t, g.dev, 1)
	g.connect(l, 10, 1, 1<<20)
	g.connect(l, 11, 1, 1<<20)
	g.send(device.Header{SrcPort: 12, DstPort: 1, Op: device.OpRequest}, nil)
	g.expect(device.OpRst)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := g.dev.Dial(ctx, 80); err == nil {
		t.Fatal("dial beyond the connection limit succeeded")
	}
}

func TestHostDial(t *testing.T) {
	g := newGuest(t, device.Options{})
	type result struct {
		c   net.Conn
		err error
	}
	dial := func() chan result {
		ch := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := g.dev.Dial(ctx, 1024)
			ch <- result{c, err}
		}()
		return ch
	}

	ch := dial()
	req := g.expect(device.OpRequest)
	if req.DstPort != 1024 {
		t.Fatalf("request %v", req.Header)
	}
	g.send(device.Header{SrcPort: 1024, DstPort: req.SrcPort, Op: device.OpResponse, BufAlloc: 4096}, nil)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()

	ch = dial()
	req = g.expect(device.OpRequest)
	g.send(device.Header{SrcPort: 1024, DstPort: req.SrcPort, Op: device.OpRst}, nil)
	if r := <-ch; !errors.Is(r.err, syscall.ECONNREFUSED) {
		t.Fatalf("dial answered with RST: %v, want ECONNREFUSED", r.err)
	}

	// A guest that never answers: the context ends the dial and the guest
	// is told with a reset.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := g.dev.Dial(ctx, 1025); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial without answer: %v", err)
	}
	g.expect(device.OpRequest)
	g.expect(device.OpRst)
}

func TestHostCloseShutsDown(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20)
	c.Write([]byte("bye"))
	c.Close()
	if p := g.expect(device.OpRW); string(p.Data) != "bye" {
		t.Fatalf("data written before Close: %q", p.Data)
	}
	if p := g.expect(device.OpShutdown); p.Flags != device.ShutdownRcv|device.ShutdownSend {
		t.Fatalf("shutdown flags %#x", p.Flags)
	}
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRst}, nil)
	deadline := time.Now().Add(5 * time.Second)
	for g.dev.Stats().Conns != 0 {
		if time.Now().After(deadline) {
			t.Fatal("connection not released after the guest's reset")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

func TestDeadlines(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 0) // no credit: writes cannot leave
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ETIMEDOUT) && !isTimeout(err) {
		t.Fatalf("read past deadline: %v", err)
	}
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Write(make([]byte, 2*device.DefaultBufferSize)); !isTimeout(err) {
		t.Fatalf("write past deadline: %v", err)
	}
	if s := g.dev.Stats(); s.SendBuffered != device.DefaultBufferSize {
		t.Fatalf("send buffer holds %d bytes, want the bound %d", s.SendBuffered, device.DefaultBufferSize)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestCloseDevice(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	g.dev.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read on a closed device succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read not unblocked by device Close")
	}
	if _, err := l.Accept(); err == nil {
		t.Fatal("accept on a closed device succeeded")
	}
}

// TestDialBeforeTheGuestIsUp: dials that time out while the guest's driver
// has not started leave no connection behind.
func TestDialBeforeTheGuestIsUp(t *testing.T) {
	d, err := device.New(cid, device.Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, err := d.Dial(ctx, 1024)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial without a guest: %v", err)
		}
	}
	if s := d.Stats(); s.Conns != 0 {
		t.Fatalf("%d connections left by timed-out dials", s.Conns)
	}
}

// TestTinyReceiveBuffers: receive buffers with room for a header only
// cannot carry data; the device hands them back empty and does not spin.
func TestTinyReceiveBuffers(t *testing.T) {
	g := newGuestRx(t, device.Options{}, 0)
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20) // a header-only RESPONSE fits
	if _, err := c.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if u := g.rx.TakeUsed(); len(u) > 0 {
			for _, e := range u {
				if e.Len != 0 {
					t.Fatalf("used length %d in a header-only buffer", e.Len)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("device neither used nor skipped the tiny buffers")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stats := make(chan device.Stats, 1)
	go func() { stats <- g.dev.Stats() }()
	select {
	case s := <-stats:
		if s.SendBuffered != 4 {
			t.Fatalf("send buffer holds %d bytes, want the 4 written", s.SendBuffered)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("device is stuck")
	}
}

// TestPauseResume: QEMU stops the rings when the VM pauses and restarts
// them where they stopped; connections survive.
func TestPauseResume(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20)
	rxBase, txBase := g.f.StopRing(device.QueueRX), g.f.StopRing(device.QueueTX)
	if txBase != 1 {
		t.Fatalf("tx stopped at %d, want 1 (one REQUEST consumed)", txBase)
	}
	// Data written while paused waits.
	if _, err := c.Write([]byte("while paused")); err != nil {
		t.Fatal(err)
	}
	g.expectNothing(100 * time.Millisecond)
	g.f.StartRing(device.QueueRX, rxBase)
	g.f.StartRing(device.QueueTX, txBase)
	if p := g.expect(device.OpRW); string(p.Data) != "while paused" {
		t.Fatalf("after resume the guest got %q", p.Data)
	}
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRW}, []byte("resumed"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "resumed" {
		t.Fatalf("host read %q, %v", buf[:n], err)
	}
}

// TestNotificationSuppression: a guest that turned interrupts off (it is
// polling) gets its chains back without one, one that has them on gets
// one; and once the device has drained the tx queue kicks are on again,
// or the next packet would wait forever.
func TestNotificationSuppression(t *testing.T) {
	g := newGuest(t, device.Options{})
	l := listen(t, g.dev, 1234)
	c := g.connect(l, 5555, 1234, 1<<20)
	rw := func(data string) {
		h := device.Header{SrcCID: cid, DstCID: device.HostCID, SrcPort: 5555, DstPort: 1234,
			Type: device.TypeStream, Op: device.OpRW, Len: uint32(len(data)), BufAlloc: 1 << 20}
		h.Encode(g.f.Mem.At(g.txHdr, device.HeaderSize))
		copy(g.f.Mem.At(g.txData, len(data)), data)
		if _, ok := g.tx.AddChain([]testdriver.Buf{{Addr: g.txHdr, Len: device.HeaderSize}, {Addr: g.txData, Len: uint32(len(data))}}); !ok {
			t.Fatal("tx ring full")
		}
		g.f.Kick(device.QueueTX)
	}
	for g.f.WaitCall(device.QueueTX, 50*time.Millisecond) { // interrupts left from connecting
	}
	buf := make([]byte, 16)
	for _, tc := range []struct {
		data      string
		interrupt bool
	}{{"quiet", false}, {"loud", true}} {
		flags := uint16(virtq.AvailFNoInterrupt)
		if tc.interrupt {
			flags = 0
		}
		binary.LittleEndian.PutUint16(g.f.Mem.At(g.tx.Avail, 2), flags)
		rw(tc.data)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != tc.data {
			t.Fatalf("host read %q, %v; want %q", buf[:n], err, tc.data)
		}
		if got := g.f.WaitCall(device.QueueTX, 300*time.Millisecond); got != tc.interrupt {
			t.Errorf("%s: interrupt %v, want %v", tc.data, got, tc.interrupt)
		}
		if u := g.tx.TakeUsed(); len(u) != 1 {
			t.Fatalf("%s: %d used chains, want 1", tc.data, len(u))
		}
		if f := binary.LittleEndian.Uint16(g.f.Mem.At(g.tx.Used, 2)); f&virtq.UsedFNoNotify != 0 {
			t.Fatalf("%s: tx queue idle with kicks off (used flags %#x)", tc.data, f)
		}
	}
}

// TestWriteTo: io.Copy from a connection takes WriteTo, which hands the
// buffered bytes to the writer in order, grants credit as Read does, and
// ends cleanly when the guest shuts its side down.
func TestWriteTo(t *testing.T) {
	g := newGuest(t, device.Options{BufferSize: device.MaxPacketData})
	l := listen(t, g.dev, 1)
	c := g.connect(l, 2, 1, 1<<20)
	if _, ok := c.(io.WriterTo); !ok {
		t.Fatal("a connection is no io.WriterTo")
	}
	var want bytes.Buffer
	copied := make(chan error, 1)
	var got bytes.Buffer
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, err := io.Copy(&got, c)
		copied <- err
	}()
	for i := range 3 {
		data := bytes.Repeat([]byte{byte('a' + i)}, device.MaxPacketData)
		want.Write(data)
		g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpRW}, data)
		// The whole buffer went to the copy: the guest hears of it
		// before it may send more.
		if p := g.expect(device.OpCreditUpdate); p.FwdCnt != uint32((i+1)*device.MaxPacketData) {
			t.Fatalf("credit update %v after %d packets", p.Header, i+1)
		}
	}
	g.send(device.Header{SrcPort: 2, DstPort: 1, Op: device.OpShutdown, Flags: device.ShutdownSend}, nil)
	select {
	case err := <-copied:
		if err != nil {
			t.Fatalf("io.Copy: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("io.Copy did not end at the guest's shutdown")
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("copied %d bytes, not the %d the guest sent", got.Len(), want.Len())
	}
}
