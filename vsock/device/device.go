// Package device is the virtio-vsock device behind vmpod's vhost-user
// backend: it reads packets the guest puts on the TX queue, writes packets
// into buffers the guest puts on the RX queue, and presents each stream
// connection to host code as a net.Conn.
//
// A vsock primer. A stream connection is named by (guest CID, guest port,
// host CID 2, host port). Either side opens it with REQUEST, the other
// answers RESPONSE or RST. Data moves in RW packets. Flow control is
// credit-based: every packet carries the sender's receive buffer size
// (buf_alloc) and how many bytes its application has consumed (fwd_cnt); a
// sender may have at most buf_alloc - (tx_cnt - fwd_cnt) bytes in flight.
// CREDIT_UPDATE announces fresh credit, CREDIT_REQUEST asks for it. SHUTDOWN
// half- or fully closes; RST ends a connection at once.
//
// The guest is hostile: a packet that breaks the rules (too long, more data
// than the credit we granted, an unknown connection, a bad type or op) gets
// an RST; buffers per connection and the number of connections are
// bounded; nothing a guest sends can make the host panic or grow without
// limit.
package device

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/vsock/vhostuser"
	"github.com/vmpod/vmpod/vsock/virtq"
)

// Queue numbers.
const (
	QueueRX    = 0
	QueueTX    = 1
	QueueEvent = 2
)

// Limits.
const (
	// MaxPacketData bounds the payload of one packet, both ways (Linux's
	// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
	MaxPacketData = 64 << 10
	// DefaultBufferSize is the receive and send buffer of one connection.
	DefaultBufferSize = 256 << 10
	// DefaultMaxConns bounds live connections per guest.
	DefaultMaxConns = 1023
	// maxControl bounds queued packets that belong to no connection (RSTs).
	maxControl = 256
	// listenBacklog bounds connections waiting in Accept.
	listenBacklog = 64
	// closeTimeout is how long Close waits for the guest's RST.
	closeTimeout = 8 * time.Second
	// firstEphemeralPort is where host ports for Dial start.
	firstEphemeralPort = 49152
)

// Options tune a Device. Memory held for connections is at most
// MaxConns × 2 × BufferSize, and a guest can only make the host hold
// receive buffers on connections the host accepted or dialed: buffers are
// allocated on first use and freed when a connection ends.
type Options struct {
	BufferSize int // per connection and direction; DefaultBufferSize if 0
	MaxConns   int // DefaultMaxConns if 0
	// Log receives the device's diagnostics; log.L if nil.
	Log *log.Entry
}

type connKey struct {
	hostPort, guestPort uint32
}

// Device is one virtio-vsock device. It implements vhostuser.Device.
type Device struct {
	cid    uint64
	opts   Options
	vrings []*vhostuser.Vring
	work   chan struct{} // cap 1: the worker has something to do
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	conns     map[connKey]*Conn
	listeners map[uint32]*Listener
	control   fifo[Header] // packets for no connection
	pending   fifo[*Conn]  // connections with packets to send, in turn
	nextPort  uint32
	peakRecv  int

	// The worker's scratch chains, one per queue it takes from: reused so
	// that a packet costs no allocation.
	txChain, rxChain virtq.Chain

	// Traffic counters, for metrics: atomic so that Counters reads them
	// without d.mu; updated where the packets are handled anyway, so they
	// cost no allocation.
	counters struct {
		txPackets, txBytes atomic.Uint64 // guest -> host
		rxPackets, rxBytes atomic.Uint64 // host -> guest
		rstSent, rstRecv   atomic.Uint64
		connsOpened        atomic.Uint64
	}
}

var _ vhostuser.Device = (*Device)(nil)

// New returns a device for a guest with context ID cid and starts its
// worker. Close stops it.
func New(cid uint64, opts Options) (*Device, error) {
	if cid <= HostCID || cid >= 0xffffffff {
		return nil, fmt.Errorf("guest CID %d is reserved or out of range", cid)
	}
	if opts.BufferSize == 0 {
		opts.BufferSize = DefaultBufferSize
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.Log == nil {
		opts.Log = log.L
	}
	if opts.MaxConns < 0 {
		return nil, fmt.Errorf("connection limit %d is negative", opts.MaxConns)
	}
	if opts.BufferSize < MaxPacketData || opts.BufferSize > 64<<20 {
		return nil, fmt.Errorf("buffer size %d out of range [%d, %d]", opts.BufferSize, MaxPacketData, 64<<20)
	}
	d := &Device{
		cid:       cid,
		opts:      opts,
		vrings:    []*vhostuser.Vring{vhostuser.NewVring(QueueRX), vhostuser.NewVring(QueueTX), vhostuser.NewVring(QueueEvent)},
		work:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		conns:     make(map[connKey]*Conn),
		listeners: make(map[uint32]*Listener),
		nextPort:  firstEphemeralPort,
	}
	d.wg.Add(1)
	go d.run()
	return d, nil
}

// CID is the guest's context ID.
func (d *Device) CID() uint64 { return d.cid }

// Features implements vhostuser.Device: virtio 1.0, nothing else.
func (d *Device) Features() uint64 { return vhostuser.FeatureVersion1 }

// Config implements vhostuser.Device: the config space is the guest CID.
func (d *Device) Config(offset, size uint32) ([]byte, error) {
	var cfg [8]byte
	binary.LittleEndian.PutUint64(cfg[:], d.cid)
	if uint64(offset)+uint64(size) > uint64(len(cfg)) {
		return nil, fmt.Errorf("config read %d+%d beyond the %d-byte vsock config", offset, size, len(cfg))
	}
	return cfg[offset : offset+size], nil
}

// Vrings implements vhostuser.Device.
func (d *Device) Vrings() []*vhostuser.Vring { return d.vrings }

// Kick implements vhostuser.Device.
func (d *Device) Kick(int) { d.wake() }

func (d *Device) wake() {
	select {
	case d.work <- struct{}{}:
	default:
	}
}

// Close resets every connection, closes every listener and stops the
// worker.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for _, c := range d.conns {
		c.fail(errDeviceClosed)
	}
	d.conns = map[connKey]*Conn{}
	for _, l := range d.listeners {
		l.closeLocked()
	}
	d.listeners = map[uint32]*Listener{}
	d.pending.reset()
	d.control.reset()
	d.mu.Unlock()
	close(d.done)
	d.wg.Wait()
	return nil
}

var errDeviceClosed = errors.New("vsock device closed")

// run processes the queues whenever there is something to do.
func (d *Device) run() {
	defer d.wg.Done()
	for {
		select {
		case <-d.done:
			return
		case <-d.work:
		}
		d.processTX()
		d.processRX()
	}
}

// processTX consumes the guest's packets. While it drains the queue the
// guest is asked not to kick (each kick is a VM exit and a wake-up of this
// worker for nothing); the guest hears once per batch that its chains are
// used.
func (d *Device) processTX() {
	v := d.vrings[QueueTX]
	v.Lock()
	defer v.Unlock()
	q := v.Queue()
	if q == nil {
		return
	}
	used := false
	c := &d.txChain
	// At most one queue's worth per round, so that a guest refilling the
	// ring as fast as we drain it cannot keep the ring locked forever.
	budget := int(q.Size())
	q.SetNotify(false)
	for {
		if budget == 0 {
			d.wake()
			break
		}
		ok, err := q.PopInto(c)
		if err != nil {
			d.opts.Log.WithError(err).Warn("vsock: guest broke the tx queue")
			v.Break(err)
			return
		}
		if !ok {
			// Kicks back on, then look once more: a chain the guest
			// added while they were off came without one.
			q.SetNotify(true)
			if n, err := q.Pending(); err != nil || n == 0 {
				break
			}
			q.SetNotify(false)
			continue
		}
		budget--
		if c.Err != nil {
			d.opts.Log.WithError(c.Err).Debug("vsock: bad tx descriptor chain")
		} else {
			d.txPacket(c)
		}
		// The chain goes back to the guest even when it was bad.
		if err := q.AddUsed(c.Head, 0); err == nil {
			used = true
		}
	}
	if budget == 0 {
		// Out of budget with chains left: the next round (already
		// scheduled) needs no kick, and must not miss one either.
		q.SetNotify(true)
	}
	if used && q.WantsInterrupt() {
		if err := v.Notify(); err != nil {
			d.opts.Log.WithError(err).Debug("vsock: notify tx")
		}
	}
}

// txPacket handles one packet from the guest. Guest memory stays mapped
// while the tx vring is locked, and the payload is copied exactly once,
// straight into the connection's buffer.
func (d *Device) txPacket(c *virtq.Chain) {
	var raw [HeaderSize]byte
	if c.CopyOut(raw[:], 0) < HeaderSize {
		d.opts.Log.Debug("vsock: tx packet shorter than its header")
		return
	}
	h, _ := ParseHeader(raw[:])
	d.counters.txPackets.Add(1)
	payload := func(dst []byte, off int) int { return c.CopyOut(dst, HeaderSize+off) }
	d.mu.Lock()
	d.handlePacket(h, c.ReadableLen()-HeaderSize, payload)
	d.mu.Unlock()
}

// processRX fills the guest's receive buffers with pending packets.
func (d *Device) processRX() {
	v := d.vrings[QueueRX]
	v.Lock()
	defer v.Unlock()
	q := v.Queue()
	if q == nil {
		return
	}
	used := false
	d.mu.Lock()
	for budget := int(q.Size()); d.hasRXWork(); budget-- {
		if budget == 0 {
			d.wake()
			break
		}
		c := &d.rxChain
		ok, err := q.PopInto(c)
		if err != nil {
			d.opts.Log.WithError(err).Warn("vsock: guest broke the rx queue")
			v.Break(err)
			break
		}
		if !ok {
			break
		}
		n := 0
		if c.Err != nil {
			d.opts.Log.WithError(c.Err).Debug("vsock: bad rx descriptor chain")
		} else if c.WritableLen() < HeaderSize {
			d.opts.Log.Debug("vsock: rx buffer shorter than a packet header")
		} else {
			n = d.rxPacket(c)
		}
		if err := q.AddUsed(c.Head, uint32(n)); err == nil {
			used = true
		}
	}
	d.mu.Unlock()
	if used && q.WantsInterrupt() {
		if err := v.Notify(); err != nil {
			d.opts.Log.WithError(err).Debug("vsock: notify rx")
		}
	}
}

// hasRXWork reports whether a packet is ready, dropping connections that
// were queued but have nothing to send any more (they are queued again
// when they do), so that no guest buffer is taken for nothing. d.mu is
// held.
func (d *Device) hasRXWork() bool {
	for d.pending.len() > 0 && !d.pending.peek().hasWork() {
		d.pending.pop().queued = false
	}
	return d.control.len() > 0 || d.pending.len() > 0
}

// rxPacket writes the next pending packet into c and returns its length.
func (d *Device) rxPacket(c *virtq.Chain) int {
	var raw [HeaderSize]byte
	if d.control.len() > 0 {
		h := d.control.pop()
		h.Encode(raw[:])
		d.countRX(h, 0)
		return c.CopyIn(raw[:], 0)
	}
	// Each queued connection gets one chance, so a buffer too small for
	// any data cannot make this spin.
	for range d.pending.len() {
		conn := d.pending.pop()
		conn.queued = false
		max := c.WritableLen() - HeaderSize
		if max > MaxPacketData {
			max = MaxPacketData
		}
		h, data1, data2, ok := conn.nextPacket(max)
		if !ok {
			if conn.hasWork() {
				d.enqueue(conn)
			}
			continue
		}
		h.Encode(raw[:])
		n := c.CopyIn(raw[:], 0)
		n += c.CopyIn(data1, n)
		n += c.CopyIn(data2, n)
		d.countRX(h, len(data1)+len(data2))
		conn.sent(h)
		if conn.hasWork() {
			d.enqueue(conn)
		}
		return n
	}
	return 0
}

// countRX counts one packet to the guest.
func (d *Device) countRX(h Header, data int) {
	d.counters.rxPackets.Add(1)
	d.counters.rxBytes.Add(uint64(data))
	if h.Op == OpRst {
		d.counters.rstSent.Add(1)
	}
}

// enqueue schedules conn for the rx queue. d.mu is held.
func (d *Device) enqueue(c *Conn) {
	if !c.queued && !d.closed {
		c.queued = true
		d.pending.push(c)
	}
}

// reply queues a packet that belongs to no connection. d.mu is held.
func (d *Device) reply(h Header) {
	if d.control.len() >= maxControl {
		d.opts.Log.WithField("packet", h).Debug("vsock: control queue full, dropping")
		return
	}
	d.control.push(h)
}

// rstFor queues a reset answering h. d.mu is held.
func (d *Device) rstFor(h Header) {
	if h.Op == OpRst {
		return
	}
	// From the address the guest asked, even another CID's: the guest's
	// kernel takes a reset only from the peer it tried to reach, and would
	// otherwise wait out its connect timeout.
	d.reply(Header{SrcCID: h.DstCID, DstCID: d.cid, SrcPort: h.DstPort, DstPort: h.SrcPort, Type: TypeStream, Op: OpRst})
}

// Dial opens a connection to port on the guest. It waits for the guest's
// answer until ctx ends.
func (d *Device) Dial(ctx context.Context, port uint32) (*Conn, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, fmt.Errorf("vsock dial guest port %d: %w", port, errDeviceClosed)
	}
	if len(d.conns) >= d.opts.MaxConns {
		d.mu.Unlock()
		return nil, fmt.Errorf("vsock dial guest port %d: %d connections already open", port, len(d.conns))
	}
	key, ok := d.freeKey(port)
	if !ok {
		d.mu.Unlock()
		return nil, fmt.Errorf("vsock dial guest port %d: no free host port", port)
	}
	c := d.newConn(key, stateConnecting)
	c.flags |= needRequest
	d.conns[key] = c
	d.enqueue(c)
	d.mu.Unlock()
	d.wake()

	select {
	case <-c.settled:
	case <-ctx.Done():
		d.mu.Lock()
		if c.state == stateConnecting {
			// A REQUEST the guest never saw needs no RST: drop it, so that
			// dialing a guest that is still booting leaves nothing behind.
			d.resetLocked(c, c.flags&needRequest == 0, ctx.Err())
		}
		d.mu.Unlock()
		d.wake()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c.state != stateEstablished {
		return nil, fmt.Errorf("vsock dial guest port %d: %w", port, c.err)
	}
	return c, nil
}

// freeKey picks an unused host port for a connection to guestPort.
func (d *Device) freeKey(guestPort uint32) (connKey, bool) {
	for i := 0; i < 1<<16; i++ {
		p := d.nextPort
		d.nextPort++
		if d.nextPort == 0xffffffff {
			d.nextPort = firstEphemeralPort
		}
		k := connKey{hostPort: p, guestPort: guestPort}
		if _, used := d.conns[k]; !used {
			if _, listening := d.listeners[p]; !listening {
				return k, true
			}
		}
	}
	return connKey{}, false
}

// Listen accepts connections the guest opens to host port port.
func (d *Device) Listen(port uint32) (*Listener, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("vsock listen on host port %d: %w", port, errDeviceClosed)
	}
	if _, ok := d.listeners[port]; ok {
		return nil, fmt.Errorf("vsock listen on host port %d: already listening", port)
	}
	l := &Listener{d: d, port: port, accept: make(chan *Conn, listenBacklog), done: make(chan struct{})}
	d.listeners[port] = l
	return l, nil
}

// Stats is a snapshot of the device's connections and buffers.
type Stats struct {
	Conns        int // live connections
	RecvBuffered int // guest->host bytes waiting for the host to read
	SendBuffered int // host->guest bytes waiting for credit or rx buffers
	// PeakRecvBuffered is the most any one connection ever held unread:
	// it never exceeds the buffer size, because the guest is held to the
	// credit it was given.
	PeakRecvBuffered int
}

// Counters are the device's traffic since it started. RX is host to
// guest, TX guest to host (the virtqueues' names).
type Counters struct {
	RXPackets, RXBytes uint64
	TXPackets, TXBytes uint64 // TXBytes: stream payload the host took
	// ResetsSent and ResetsReceived count RST packets each way.
	ResetsSent, ResetsReceived uint64
	// ConnsOpened counts connections established either way.
	ConnsOpened uint64
}

// Counters returns the traffic counters; it takes no lock.
func (d *Device) Counters() Counters {
	c := &d.counters
	return Counters{
		RXPackets: c.rxPackets.Load(), RXBytes: c.rxBytes.Load(),
		TXPackets: c.txPackets.Load(), TXBytes: c.txBytes.Load(),
		ResetsSent: c.rstSent.Load(), ResetsReceived: c.rstRecv.Load(),
		ConnsOpened: c.connsOpened.Load(),
	}
}

// Stats returns the current statistics.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{Conns: len(d.conns), PeakRecvBuffered: d.peakRecv}
	for _, c := range d.conns {
		s.RecvBuffered += c.rbuf.Len()
		s.SendBuffered += c.wbuf.Len()
	}
	return s
}
