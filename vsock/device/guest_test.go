package device_test

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock/device"
	"github.com/vmpod/vmpod/vsock/internal/testdriver"
	"github.com/vmpod/vmpod/vsock/vhostuser"
)

const (
	cid       = 3
	queueSize = 64
	rxBufSize = 4096
)

// guest plays a Linux virtio-vsock driver against a Device through a real
// vhost-user connection.
type guest struct {
	t      testing.TB
	f      *testdriver.Frontend
	dev    *device.Device
	rx, tx *testdriver.Ring
	rxBufs map[uint16][2]uint64 // head -> header and data buffer
	rxData uint32               // data buffer size; 0 posts header-only buffers
	txHdr  uint64               // scratch for outgoing packets
	txData uint64
	inbox  []packet
}

type packet struct {
	device.Header
	Data []byte
}

func newGuest(t testing.TB, opts device.Options) *guest {
	t.Helper()
	return newGuestRx(t, opts, rxBufSize)
}

// newGuestRx posts receive buffers of rxData bytes after the header.
func newGuestRx(t testing.TB, opts device.Options, rxData uint32) *guest {
	t.Helper()
	dev, err := device.New(cid, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	f := testdriver.Connect(t, func(ctx context.Context, c *net.UnixConn) error {
		return vhostuser.Serve(ctx, c, dev)
	})
	cfg := f.Setup(2, queueSize)
	if len(cfg) != 20 || binary.LittleEndian.Uint64(cfg[12:]) != cid {
		t.Fatalf("config space %x does not carry CID %d", cfg, cid)
	}
	g := &guest{t: t, f: f, dev: dev, rx: f.Rings[device.QueueRX], tx: f.Rings[device.QueueTX], rxBufs: map[uint16][2]uint64{}, rxData: rxData}
	g.txHdr = f.Mem.Alloc(device.HeaderSize, 8)
	g.txData = f.Mem.Alloc(device.MaxPacketData+4096, 8)
	for range queueSize / 2 {
		g.postRx(f.Mem.Alloc(device.HeaderSize, 8), f.Mem.Alloc(rxBufSize, 8))
	}
	f.Kick(device.QueueRX)
	return g
}

// postRx offers a receive buffer the way Linux 6.1 does: header and data
// in two descriptors.
func (g *guest) postRx(hdr, data uint64) {
	bufs := []testdriver.Buf{{Addr: hdr, Len: device.HeaderSize, Write: true}}
	if g.rxData > 0 {
		bufs = append(bufs, testdriver.Buf{Addr: data, Len: g.rxData, Write: true})
	}
	head, ok := g.rx.AddChain(bufs)
	if !ok {
		g.t.Fatal("rx ring full")
	}
	g.rxBufs[head] = [2]uint64{hdr, data}
}

// send puts one packet on the tx queue and waits until the device used it.
func (g *guest) send(h device.Header, data []byte) {
	g.t.Helper()
	if h.SrcCID == 0 {
		h.SrcCID = cid
	}
	if h.DstCID == 0 {
		h.DstCID = device.HostCID
	}
	if h.Type == 0 {
		h.Type = device.TypeStream
	}
	if h.Len == 0 {
		h.Len = uint32(len(data))
	}
	h.Encode(g.f.Mem.At(g.txHdr, device.HeaderSize))
	bufs := []testdriver.Buf{{Addr: g.txHdr, Len: device.HeaderSize}}
	if len(data) > 0 {
		copy(g.f.Mem.At(g.txData, len(data)), data)
		bufs = append(bufs, testdriver.Buf{Addr: g.txData, Len: uint32(len(data))})
	}
	g.sendChain(bufs)
}

// sendChain publishes a raw tx chain and waits for it to be used.
func (g *guest) sendChain(bufs []testdriver.Buf) []testdriver.Used {
	g.t.Helper()
	if _, ok := g.tx.AddChain(bufs); !ok {
		g.t.Fatal("tx ring full")
	}
	g.f.Kick(device.QueueTX)
	return g.waitUsed(g.tx)
}

func (g *guest) waitUsed(r *testdriver.Ring) []testdriver.Used {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if u := r.TakeUsed(); len(u) > 0 {
			return u
		}
		g.f.WaitCall(device.QueueTX, 10*time.Millisecond)
	}
	g.t.Fatal("device did not use the tx chain within 10s")
	return nil
}

// collect moves delivered rx packets into the inbox and reposts buffers.
func (g *guest) collect() {
	for _, u := range g.rx.TakeUsed() {
		b, ok := g.rxBufs[u.Head]
		if !ok {
			g.t.Fatalf("device used unknown rx head %d", u.Head)
		}
		delete(g.rxBufs, u.Head)
		if u.Len < device.HeaderSize {
			g.t.Fatalf("rx used length %d shorter than a header", u.Len)
		}
		h, _ := device.ParseHeader(g.f.Mem.At(b[0], device.HeaderSize))
		if int(u.Len) != device.HeaderSize+int(h.Len) || h.Len > rxBufSize {
			g.t.Fatalf("rx used length %d for %v", u.Len, h)
		}
		data := append([]byte(nil), g.f.Mem.At(b[1], int(h.Len))...)
		g.inbox = append(g.inbox, packet{h, data})
		g.postRx(b[0], b[1])
	}
	g.f.Kick(device.QueueRX)
}

// recv returns the next packet from the device, within d.
func (g *guest) recv(d time.Duration) (packet, bool) {
	g.t.Helper()
	deadline := time.Now().Add(d)
	for {
		g.collect()
		if len(g.inbox) > 0 {
			p := g.inbox[0]
			g.inbox = g.inbox[1:]
			return p, true
		}
		if time.Now().After(deadline) {
			return packet{}, false
		}
		g.f.WaitCall(device.QueueRX, 10*time.Millisecond)
	}
}

// expect returns the next packet and checks its op.
func (g *guest) expect(op uint16) packet {
	g.t.Helper()
	return g.expectFrom(op, device.HostCID)
}

// expectFrom returns the next packet and checks its op and source CID.
func (g *guest) expectFrom(op uint16, src uint64) packet {
	g.t.Helper()
	p, ok := g.recv(10 * time.Second)
	if !ok {
		g.t.Fatalf("no packet from the device, want op %d", op)
	}
	if p.Op != op {
		g.t.Fatalf("got %v, want op %d", p.Header, op)
	}
	if p.SrcCID != src || p.DstCID != cid || p.Type != device.TypeStream {
		g.t.Fatalf("packet %v is misaddressed", p.Header)
	}
	return p
}

// expectNothing checks the device sends nothing for a while.
func (g *guest) expectNothing(d time.Duration) {
	g.t.Helper()
	if p, ok := g.recv(d); ok {
		g.t.Fatalf("unexpected packet %v", p.Header)
	}
}

// connect opens a guest-initiated connection from guestPort to hostPort
// and returns the host's end.
func (g *guest) connect(l net.Listener, guestPort, hostPort uint32, bufAlloc uint32) net.Conn {
	g.t.Helper()
	g.send(device.Header{SrcPort: guestPort, DstPort: hostPort, Op: device.OpRequest, BufAlloc: bufAlloc}, nil)
	p := g.expect(device.OpResponse)
	if p.SrcPort != hostPort || p.DstPort != guestPort {
		g.t.Fatalf("response %v for the wrong ports", p.Header)
	}
	c, err := l.Accept()
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}
