package device

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

type connState int

const (
	stateConnecting connState = iota
	stateEstablished
	stateClosed
)

// Packets a connection owes the guest.
const (
	needRequest = 1 << iota
	needResponse
	needCredit
	needShutdown
	needRst
)

// Conn is one stream connection between a host port and a guest port. It
// is a net.Conn. All fields are guarded by the device's mu.
type Conn struct {
	d       *Device
	key     connKey
	state   connState
	flags   int  // packets owed to the guest
	queued  bool // in d.pending
	settled chan struct{}
	err     error // why the connection ended abnormally

	rbuf        ring   // guest -> host data not yet read
	rxCnt       uint32 // bytes received from the guest
	fwdCnt      uint32 // bytes the host application consumed
	lastFwdSent uint32 // fwdCnt as last told to the guest

	wbuf         ring   // host -> guest data not yet sent
	txCnt        uint32 // bytes sent to the guest
	peerBufAlloc uint32
	peerFwdCnt   uint32

	peerShut    uint32 // SHUTDOWN flags received
	localShut   uint32 // SHUTDOWN flags to send or sent
	closedLocal bool
	closeTimer  *time.Timer

	readCh, writeCh chan struct{}
	rdl, wdl        *deadline

	// rmu makes Read and WriteTo one reader at a time: WriteTo hands
	// buffered bytes to its writer without d.mu held.
	rmu sync.Mutex
}

var _ net.Conn = (*Conn)(nil)

func (d *Device) newConn(key connKey, state connState) *Conn {
	return &Conn{
		d: d, key: key, state: state,
		settled: make(chan struct{}),
		rbuf:    newRing(d.opts.BufferSize),
		wbuf:    newRing(d.opts.BufferSize),
		readCh:  make(chan struct{}, 1),
		writeCh: make(chan struct{}, 1),
		rdl:     newDeadline(),
		wdl:     newDeadline(),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *Conn) signalRead()  { signal(c.readCh) }
func (c *Conn) signalWrite() { signal(c.writeCh) }

// credit is how many bytes the guest can take now.
func (c *Conn) credit() uint32 {
	inflight := c.txCnt - c.peerFwdCnt
	if inflight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inflight
}

func (c *Conn) canSendData() bool {
	return c.state == stateEstablished && c.wbuf.Len() > 0 && c.peerShut&ShutdownRcv == 0 && c.credit() > 0
}

func (c *Conn) canShutdown() bool {
	return c.flags&needShutdown != 0 && (c.wbuf.Len() == 0 || c.peerShut&ShutdownRcv != 0)
}

// hasWork reports whether the connection has a packet to send now.
func (c *Conn) hasWork() bool {
	if c.flags&(needRst|needRequest|needResponse|needCredit) != 0 {
		return true
	}
	return c.canSendData() || c.canShutdown()
}

func (c *Conn) header(op uint16) Header {
	return Header{
		SrcCID: HostCID, DstCID: c.d.cid, SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: TypeStream, Op: op, BufAlloc: uint32(c.d.opts.BufferSize), FwdCnt: c.fwdCnt,
	}
}

// nextPacket returns the next packet for the guest, carrying at most max
// payload bytes (the two slices), or ok false.
func (c *Conn) nextPacket(max int) (h Header, data1, data2 []byte, ok bool) {
	switch {
	case c.flags&needRst != 0:
		return c.header(OpRst), nil, nil, true
	case c.flags&needRequest != 0:
		return c.header(OpRequest), nil, nil, true
	case c.flags&needResponse != 0:
		return c.header(OpResponse), nil, nil, true
	case c.canSendData() && max > 0:
		n := min(c.wbuf.Len(), int(c.credit()), max)
		h = c.header(OpRW)
		h.Len = uint32(n)
		data1, data2 = c.wbuf.Peek(n)
		return h, data1, data2, true
	case c.canShutdown():
		h = c.header(OpShutdown)
		h.Flags = c.localShut
		return h, nil, nil, true
	case c.flags&needCredit != 0:
		return c.header(OpCreditUpdate), nil, nil, true
	}
	return Header{}, nil, nil, false
}

// sent records that the guest got h.
func (c *Conn) sent(h Header) {
	c.lastFwdSent = h.FwdCnt
	c.flags &^= needCredit
	switch h.Op {
	case OpRst:
		c.flags = 0
		if c.d.conns[c.key] == c {
			delete(c.d.conns, c.key)
		}
	case OpRequest:
		c.flags &^= needRequest
	case OpResponse:
		c.flags &^= needResponse
	case OpRW:
		c.wbuf.Discard(int(h.Len))
		c.txCnt += h.Len
		c.signalWrite()
	case OpShutdown:
		c.flags &^= needShutdown
	}
}

// wantCredit reports whether the guest should hear about consumed bytes:
// when its view of our free space has fallen below one packet, or half
// the buffer has been consumed since we last told it.
func (c *Conn) wantCredit() bool {
	if c.fwdCnt == c.lastFwdSent || c.state != stateEstablished {
		return false
	}
	size := uint32(c.d.opts.BufferSize)
	seen := c.rxCnt - c.lastFwdSent
	return seen > size-MaxPacketData || c.fwdCnt-c.lastFwdSent >= size/2
}

// resetLocked ends the connection. With sendRst the guest is told and the
// port pair stays reserved until it is; otherwise it is freed now.
// Buffered received data stays readable. d.mu is held.
func (d *Device) resetLocked(c *Conn, sendRst bool, err error) {
	if c.state == stateClosed {
		return
	}
	if c.state == stateConnecting {
		defer close(c.settled)
	}
	c.state = stateClosed
	if c.err == nil {
		c.err = err
	}
	c.wbuf.Release()
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	c.flags = 0
	if sendRst {
		c.flags = needRst
		d.enqueue(c)
	} else if d.conns[c.key] == c {
		delete(d.conns, c.key)
	}
	c.signalRead()
	c.signalWrite()
}

// fail ends the connection because the device went away. d.mu is held.
func (c *Conn) fail(err error) {
	if c.state == stateConnecting {
		close(c.settled)
	}
	if c.state != stateClosed || c.err == nil {
		c.err = err
	}
	c.state = stateClosed
	c.flags = 0
	c.wbuf.Release()
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	c.signalRead()
	c.signalWrite()
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "vsock", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// consumed records that the host application took n bytes and reports
// whether the guest must hear of the credit now. d.mu is held.
func (c *Conn) consumed(n int) (kick bool) {
	c.fwdCnt += uint32(n)
	if c.wantCredit() {
		c.flags |= needCredit
		c.d.enqueue(c)
		return true
	}
	return false
}

// waitData returns with d.mu held once the connection has buffered data,
// or with the error (io.EOF at a clean end; errNoData at once when
// nonblock and nothing is buffered) and d.mu released.
func (c *Conn) waitData(nonblock bool) error {
	d := c.d
	for {
		d.mu.Lock()
		if c.closedLocal {
			d.mu.Unlock()
			return c.opError("read", net.ErrClosed)
		}
		if c.rbuf.Len() > 0 {
			return nil
		}
		if c.peerShut&ShutdownSend != 0 || (c.state == stateClosed && c.err == nil) {
			d.mu.Unlock()
			return io.EOF
		}
		if c.state == stateClosed {
			err := c.err
			d.mu.Unlock()
			return c.opError("read", err)
		}
		d.mu.Unlock()
		if nonblock {
			return errNoData
		}
		select {
		case <-c.readCh:
		case <-c.rdl.wait():
			return c.opError("read", os.ErrDeadlineExceeded)
		}
	}
}

var errNoData = errors.New("no data")

// Read reads data the guest sent.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	d := c.d
	if err := c.waitData(len(p) == 0); err != nil {
		if err == errNoData {
			return 0, nil
		}
		return 0, err
	}
	n := c.rbuf.Read(p)
	kick := c.consumed(n)
	if c.rbuf.Len() > 0 {
		c.signalRead()
	}
	d.mu.Unlock()
	if kick {
		d.wake()
	}
	return n, nil
}

// WriteTo writes what the guest sends to w until the guest ends the
// stream, straight from the connection's buffer: io.Copy(w, conn) takes
// this path and saves the copy through a Read buffer.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	d := c.d
	var total int64
	for {
		if err := c.waitData(false); err != nil {
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		// The worker only appends into the free space, so the bytes
		// peeked here stay put while w takes them without d.mu.
		first, second := c.rbuf.Peek(c.rbuf.Len())
		d.mu.Unlock()
		n, werr := w.Write(first)
		if werr == nil && len(second) > 0 {
			var k int
			k, werr = w.Write(second)
			n += k
		}
		d.mu.Lock()
		if c.closedLocal {
			d.mu.Unlock()
			return total + int64(n), c.opError("read", net.ErrClosed)
		}
		c.rbuf.Discard(n)
		kick := c.consumed(n)
		d.mu.Unlock()
		if kick {
			d.wake()
		}
		total += int64(n)
		if werr != nil {
			return total, werr
		}
	}
}

// Write queues p for the guest, blocking while the send buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	d := c.d
	total := 0
	for total < len(p) {
		d.mu.Lock()
		if err := c.writeErr(); err != nil {
			d.mu.Unlock()
			return total, c.opError("write", err)
		}
		n := c.wbuf.Write(p[total:])
		total += n
		if n > 0 && c.hasWork() {
			d.enqueue(c)
		}
		d.mu.Unlock()
		if n > 0 {
			d.wake()
			continue
		}
		select {
		case <-c.writeCh:
		case <-c.wdl.wait():
			return total, c.opError("write", os.ErrDeadlineExceeded)
		}
	}
	return total, nil
}

func (c *Conn) writeErr() error {
	switch {
	case c.closedLocal:
		return net.ErrClosed
	case c.state == stateClosed && c.err != nil:
		return c.err
	case c.state == stateClosed, c.localShut&ShutdownSend != 0, c.peerShut&ShutdownRcv != 0:
		return syscall.EPIPE
	}
	return nil
}

// CloseWrite tells the guest that the host sends no more data, once the
// data already written has gone out.
func (c *Conn) CloseWrite() error {
	d := c.d
	d.mu.Lock()
	if c.state == stateEstablished && c.localShut&ShutdownSend == 0 {
		c.localShut |= ShutdownSend
		c.flags |= needShutdown
		if c.hasWork() {
			d.enqueue(c)
		}
	}
	d.mu.Unlock()
	d.wake()
	return nil
}

// Close shuts the connection down: written data still goes out, then a
// SHUTDOWN; if the guest does not reset the connection within
// closeTimeout, the host does.
func (c *Conn) Close() error {
	d := c.d
	d.mu.Lock()
	if c.closedLocal {
		d.mu.Unlock()
		return nil
	}
	c.closedLocal = true
	c.rbuf.Release()
	switch c.state {
	case stateEstablished:
		c.localShut = ShutdownRcv | ShutdownSend
		c.flags |= needShutdown
		if c.hasWork() {
			d.enqueue(c)
		}
		c.closeTimer = time.AfterFunc(closeTimeout, func() {
			d.mu.Lock()
			d.resetLocked(c, true, nil)
			d.mu.Unlock()
			d.wake()
		})
	case stateConnecting:
		d.resetLocked(c, true, net.ErrClosed)
	}
	c.signalRead()
	c.signalWrite()
	d.mu.Unlock()
	c.rdl.stop()
	c.wdl.stop()
	d.wake()
	return nil
}

// Addr is a vsock address.
type Addr struct {
	CID  uint64
	Port uint32
}

// Network implements net.Addr.
func (a Addr) Network() string { return "vsock" }

func (a Addr) String() string { return fmt.Sprintf("vm(%d):%d", a.CID, a.Port) }

// LocalAddr is the host end.
func (c *Conn) LocalAddr() net.Addr { return Addr{CID: HostCID, Port: c.key.hostPort} }

// RemoteAddr is the guest end.
func (c *Conn) RemoteAddr() net.Addr { return Addr{CID: c.d.cid, Port: c.key.guestPort} }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { c.rdl.set(t); return nil }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// Listener accepts connections the guest opens to one host port.
type Listener struct {
	d      *Device
	port   uint32
	accept chan *Conn
	done   chan struct{}
}

var _ net.Listener = (*Listener)(nil)

// Accept waits for the next connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

// Close stops listening; connections not yet accepted are reset.
func (l *Listener) Close() error {
	l.d.mu.Lock()
	if l.d.listeners[l.port] == l {
		delete(l.d.listeners, l.port)
	}
	l.closeLocked()
	l.d.mu.Unlock()
	l.d.wake()
	return nil
}

func (l *Listener) closeLocked() {
	if isClosed(l.done) {
		return
	}
	close(l.done)
	for {
		select {
		case c := <-l.accept:
			l.d.resetLocked(c, !l.d.closed, syscall.ECONNREFUSED)
		default:
			return
		}
	}
}

// Addr is the host address listened on.
func (l *Listener) Addr() net.Addr { return Addr{CID: HostCID, Port: l.port} }
