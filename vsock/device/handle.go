package device

import (
	"syscall"
)

// handlePacket runs the connection state machine for one packet from the
// guest. avail is how many payload bytes the chain holds beyond the
// header; payload copies them out. d.mu is held.
func (d *Device) handlePacket(h Header, avail int, payload func(dst []byte, off int) int) {
	if d.closed {
		return
	}
	if h.Op == OpRst {
		d.counters.rstRecv.Add(1)
	}
	if h.SrcCID != d.cid {
		// Not from our guest's address: there is nobody to reset.
		d.opts.Log.WithField("packet", h).Debug("vsock: packet from a foreign CID dropped")
		return
	}
	if h.DstCID != HostCID || h.Type != TypeStream || h.Len > MaxPacketData || int64(h.Len) > int64(avail) {
		d.opts.Log.WithField("packet", h).Debug("vsock: malformed packet")
		d.rstMalformed(h)
		return
	}
	key := connKey{hostPort: h.DstPort, guestPort: h.SrcPort}
	c := d.conns[key]
	if c == nil {
		if h.Op == OpRequest {
			d.accept(h, key)
		} else {
			d.rstFor(h)
		}
		return
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case OpResponse:
		if c.state != stateConnecting {
			d.resetLocked(c, true, syscall.ECONNRESET)
			return
		}
		c.state = stateEstablished
		close(c.settled)
		d.counters.connsOpened.Add(1)
	case OpRW:
		d.receive(c, h, payload)
	case OpCreditUpdate:
		// The new credit may let queued data go.
	case OpCreditRequest:
		c.flags |= needCredit
	case OpShutdown:
		d.shutdown(c, h.Flags)
	case OpRst:
		err := error(syscall.ECONNRESET)
		if c.state == stateConnecting {
			err = syscall.ECONNREFUSED
		}
		d.resetLocked(c, false, err)
		return
	default: // REQUEST on a live connection, or an unknown op
		d.resetLocked(c, true, syscall.ECONNRESET)
		return
	}
	c.signalWrite()
	if c.hasWork() {
		d.enqueue(c)
	}
}

// rstMalformed resets whatever connection h names.
func (d *Device) rstMalformed(h Header) {
	if c := d.conns[connKey{hostPort: h.DstPort, guestPort: h.SrcPort}]; c != nil && h.DstCID == HostCID {
		d.resetLocked(c, true, syscall.ECONNRESET)
		return
	}
	d.rstFor(h)
}

// accept answers a guest's REQUEST.
func (d *Device) accept(h Header, key connKey) {
	l := d.listeners[h.DstPort]
	if l == nil || len(d.conns) >= d.opts.MaxConns || len(l.accept) == cap(l.accept) {
		d.rstFor(h)
		return
	}
	c := d.newConn(key, stateEstablished)
	close(c.settled)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	c.flags |= needResponse
	d.conns[key] = c
	d.counters.connsOpened.Add(1)
	d.enqueue(c)
	l.accept <- c // cannot block: checked for room above, under d.mu
}

// receive buffers an RW payload.
func (d *Device) receive(c *Conn, h Header, payload func(dst []byte, off int) int) {
	if c.state != stateEstablished || c.peerShut&ShutdownSend != 0 {
		d.resetLocked(c, true, syscall.ECONNRESET)
		return
	}
	if int(h.Len) > c.rbuf.Free() {
		// More than the credit we granted.
		d.opts.Log.WithField("packet", h).Debug("vsock: guest exceeded its credit")
		d.resetLocked(c, true, syscall.ECONNRESET)
		return
	}
	if h.Len == 0 {
		return
	}
	if c.closedLocal {
		// Nobody will read it; count it as consumed.
		c.rxCnt += h.Len
		c.fwdCnt += h.Len
		return
	}
	// Copy straight from guest memory into the ring.
	n := c.rbuf.WriteFunc(int(h.Len), func(dst []byte, off int) int { return payload(dst, off) })
	c.rxCnt += uint32(n)
	d.counters.txBytes.Add(uint64(n))
	d.peakRecv = max(d.peakRecv, c.rbuf.Len())
	c.signalRead()
}

// shutdown applies a guest SHUTDOWN.
func (d *Device) shutdown(c *Conn, flags uint32) {
	c.peerShut |= flags & (ShutdownRcv | ShutdownSend)
	c.signalRead()
	if c.peerShut == ShutdownRcv|ShutdownSend {
		// Fully closed by the guest: reset, as Linux does, which frees the
		// port pair; buffered data stays readable.
		d.resetLocked(c, true, nil)
	}
}
