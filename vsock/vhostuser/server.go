package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/vsock/guestmem"
	"github.com/vmpod/vmpod/vsock/virtq"
)

// Device is what a vhost-user device implements; the server does the rest.
type Device interface {
	// Features are the virtio feature bits offered to the driver.
	// VHOST_USER_F_PROTOCOL_FEATURES is added by the server.
	Features() uint64
	// Config returns size bytes of the device's config space at offset.
	Config(offset, size uint32) ([]byte, error)
	// Vrings are the device's queues.
	Vrings() []*Vring
	// Kick tells the device that the guest notified vring i, or that the
	// ring (re)started. It must not block.
	Kick(i int)
}

// serverProtocolFeatures are what the server implements.
const serverProtocolFeatures = ProtocolReplyAck | ProtocolConfig

// server is the state of one frontend connection.
type server struct {
	ctx      context.Context
	conn     *net.UnixConn
	dev      Device
	vrings   []*Vring
	mem      *guestmem.Memory
	features uint64 // acked virtio features
	protocol uint64 // acked protocol features
}

// Serve answers the frontend on conn until it disconnects or ctx is done,
// and then stops every vring and unmaps guest memory. It returns nil when
// the frontend hung up or ctx ended, and an error for a protocol violation.
func Serve(ctx context.Context, conn *net.UnixConn, dev Device) (err error) {
	s := &server{ctx: ctx, conn: conn, dev: dev, vrings: dev.Vrings()}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer s.close()
	for {
		err := s.serveOne()
		if err == nil {
			continue
		}
		if ctx.Err() != nil || errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
}

func (s *server) close() {
	for _, v := range s.vrings {
		v.close()
	}
	if s.mem != nil {
		s.mem.Close()
		s.mem = nil
	}
}

// serveOne reads, checks and answers one request.
func (s *server) serveOne() error {
	h, payload, fds, err := s.read()
	if err != nil {
		return err
	}
	defer closeFDs(fds) // handlers take what they keep (and zero it)
	v, err := Decode(h, payload, len(fds))
	if err != nil {
		return err
	}
	log.G(s.ctx).WithField("request", h.Request).WithField("payload", v).Trace("vhost-user request")
	reply, err := s.handle(h, v, fds)
	if err != nil {
		return fmt.Errorf("vhost-user %v: %w", h.Request, err)
	}
	if reply == nil && h.NeedReply() && s.protocol&ProtocolReplyAck != 0 {
		reply = encodeU64(0)
	}
	if reply == nil {
		return nil
	}
	msg := append(h.encodeReply(len(reply)), reply...)
	if _, err := s.conn.Write(msg); err != nil {
		return fmt.Errorf("vhost-user %v: write reply: %w", h.Request, err)
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// read reads one message with the descriptors that came with it.
func (s *server) read() (Header, []byte, []int, error) {
	var hdr [headerSize]byte
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(hdr[:], oob)
	if err != nil {
		return Header{}, nil, nil, err
	}
	fds, ferr := parseFDs(oob[:oobn])
	if ferr == nil && flags&unix.MSG_CTRUNC != 0 {
		ferr = errors.New("vhost-user: too many file descriptors in one message")
	}
	if n == 0 && ferr == nil {
		ferr = io.EOF
	}
	if ferr == nil && n < headerSize {
		_, ferr = io.ReadFull(s.conn, hdr[n:])
	}
	var h Header
	if ferr == nil {
		h, ferr = ParseHeader(hdr[:])
	}
	var payload []byte
	if ferr == nil {
		payload = make([]byte, h.Size)
		_, ferr = io.ReadFull(s.conn, payload)
	}
	if ferr != nil {
		closeFDs(fds)
		return Header{}, nil, nil, ferr
	}
	return h, payload, fds, nil
}

func parseFDs(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("vhost-user: control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		f, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, f...)
	}
	return fds, nil
}

func (s *server) vring(i uint32) (*Vring, error) {
	if int(i) >= len(s.vrings) || i > 0xff {
		return nil, fmt.Errorf("vring index %d out of range (%d vrings)", i, len(s.vrings))
	}
	return s.vrings[i], nil
}

// handle executes one decoded request and returns its reply payload, if
// the request has one.
func (s *server) handle(h Header, v any, fds []int) ([]byte, error) {
	switch h.Request {
	case GetFeatures:
		return encodeU64(s.dev.Features() | FeatureProtocolFeatures), nil
	case SetFeatures:
		f := uint64(v.(U64))
		if offered := s.dev.Features() | FeatureProtocolFeatures; f&^offered != 0 {
			return nil, fmt.Errorf("features %#x not offered (%#x)", f&^offered, offered)
		}
		s.features = f
		return nil, nil
	case GetProtocolFeatures:
		return encodeU64(serverProtocolFeatures), nil
	case SetProtocolFeatures:
		p := uint64(v.(U64))
		if p&^serverProtocolFeatures != 0 {
			return nil, fmt.Errorf("protocol features %#x not offered", p&^serverProtocolFeatures)
		}
		s.protocol = p
		return nil, nil
	case SetOwner:
		return nil, nil
	case ResetOwner:
		for _, r := range s.vrings {
			r.reset()
		}
		return nil, nil
	case GetQueueNum:
		return encodeU64(uint64(len(s.vrings))), nil
	case SetMemTable:
		return nil, s.setMemTable(v.(MemTable), fds)
	case GetConfig:
		return s.getConfig(v.(ConfigSpace))
	case SetConfig:
		// The vsock config space is read-only.
		if h.NeedReply() && s.protocol&ProtocolReplyAck != 0 {
			return encodeU64(1), nil
		}
		return nil, nil
	}
	return s.handleVring(h, v, fds)
}

func (s *server) getConfig(c ConfigSpace) ([]byte, error) {
	data, err := s.dev.Config(c.Offset, c.Size)
	if err != nil {
		return nil, err
	}
	if len(data) != int(c.Size) {
		return nil, fmt.Errorf("device returned %d config bytes, want %d", len(data), c.Size)
	}
	c.Data = data
	return encodeConfig(c), nil
}

func (s *server) setMemTable(mt MemTable, fds []int) error {
	mem, err := guestmem.Map(mt.Regions, fds)
	if err != nil {
		return err
	}
	// Moving running queues onto the new mapping happens under each
	// vring's lock, so the old mapping is unused once the loop ends.
	for _, r := range s.vrings {
		r.mu.Lock()
		if r.q != nil {
			q, err := s.newQueue(r, mem, r.q.NextAvail())
			if err != nil {
				r.mu.Unlock()
				mem.Close()
				return err
			}
			r.q = q
		}
		r.mu.Unlock()
	}
	// QEMU sends a new table for every DIMM hot-added to the guest.
	log.G(s.ctx).WithField("regions", len(mt.Regions)).Debug("vhost-user memory table")
	old := s.mem
	s.mem = mem
	return old.Close()
}

func (s *server) newQueue(r *Vring, mem *guestmem.Memory, next uint16) (*virtq.Queue, error) {
	n := uint64(r.size)
	desc, err := mem.UserToGuest(r.addr.Desc, 16*n)
	if err != nil {
		return nil, fmt.Errorf("vring %d descriptor table: %w", r.index, err)
	}
	avail, err := mem.UserToGuest(r.addr.Avail, 4+2*n)
	if err != nil {
		return nil, fmt.Errorf("vring %d available ring: %w", r.index, err)
	}
	used, err := mem.UserToGuest(r.addr.Used, 4+8*n)
	if err != nil {
		return nil, fmt.Errorf("vring %d used ring: %w", r.index, err)
	}
	q, err := virtq.New(mem, virtq.Config{Size: r.size, DescAddr: desc, AvailAddr: avail, UsedAddr: used, NextAvail: next})
	if err != nil {
		return nil, fmt.Errorf("vring %d: %w", r.index, err)
	}
	return q, nil
}

func (s *server) handleVring(h Header, v any, fds []int) ([]byte, error) {
	switch p := v.(type) {
	case VringState:
		r, err := s.vring(p.Index)
		if err != nil {
			return nil, err
		}
		return s.vringState(h.Request, r, p)
	case VringAddr:
		r, err := s.vring(p.Index)
		if err != nil {
			return nil, err
		}
		if r.q != nil {
			return nil, fmt.Errorf("vring %d is running", p.Index)
		}
		r.addr, r.haveAddr = p, true
		return nil, nil
	case VringFile:
		r, err := s.vring(p.Index)
		if err != nil {
			return nil, err
		}
		var f *os.File
		if !p.NoFD {
			if err := unix.SetNonblock(fds[0], true); err != nil {
				return nil, fmt.Errorf("vring %d eventfd: %w", p.Index, err)
			}
			f = os.NewFile(uintptr(fds[0]), fmt.Sprintf("vring%d-%v", p.Index, h.Request))
			fds[0] = -1
		}
		return nil, s.vringFile(h.Request, r, f)
	}
	return nil, errors.New("unsupported request")
}

func (s *server) vringState(req Request, r *Vring, p VringState) ([]byte, error) {
	switch req {
	case SetVringNum:
		if p.Num == 0 || p.Num > virtq.MaxSize || p.Num&(p.Num-1) != 0 {
			return nil, fmt.Errorf("vring %d size %d is not a power of two in [1, %d]", r.index, p.Num, virtq.MaxSize)
		}
		if r.q != nil {
			return nil, fmt.Errorf("vring %d is running", r.index)
		}
		r.size = uint16(p.Num)
	case SetVringBase:
		if p.Num > 0xffff {
			return nil, fmt.Errorf("vring %d base %d out of range", r.index, p.Num)
		}
		if r.q != nil {
			return nil, fmt.Errorf("vring %d is running", r.index)
		}
		r.base = uint16(p.Num)
	case GetVringBase:
		// Stops the ring (vhost-user: "the back-end must stop the ring").
		base := r.stopQueue()
		r.stopKick()
		r.enabled = false
		return encodeVringState(VringState{Index: p.Index, Num: uint32(base)}), nil
	case SetVringEnable:
		if p.Num > 1 {
			return nil, fmt.Errorf("vring %d enable value %d", r.index, p.Num)
		}
		r.enabled = p.Num == 1
		if !r.enabled {
			r.stopQueue()
			return nil, nil
		}
		return nil, s.tryStart(r)
	}
	return nil, nil
}

func (s *server) vringFile(req Request, r *Vring, f *os.File) error {
	switch req {
	case SetVringCall:
		r.setCall(f)
	case SetVringErr:
		if r.errFile != nil {
			r.errFile.Close()
		}
		r.errFile = f
	case SetVringKick:
		r.stopKick()
		if f == nil {
			// Polling mode is not supported.
			return fmt.Errorf("vring %d: kick without an eventfd", r.index)
		}
		r.kick, r.kickDone = f, make(chan struct{})
		go r.watchKick(f, r.kickDone, s.dev)
		// Without protocol features a ring starts enabled.
		if s.features&FeatureProtocolFeatures == 0 {
			r.enabled = true
		}
		return s.tryStart(r)
	}
	return nil
}

// tryStart starts r once it has everything it needs.
func (s *server) tryStart(r *Vring) error {
	if r.kick == nil || !r.haveAddr || r.size == 0 || !r.enabled || s.mem == nil {
		return nil
	}
	r.mu.Lock()
	if r.q != nil {
		r.mu.Unlock()
		return nil
	}
	q, err := s.newQueue(r, s.mem, r.base)
	if err == nil {
		r.q, r.broken = q, nil
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	log.G(s.ctx).WithField("vring", r.index).WithField("size", r.size).Debug("vhost-user vring started")
	s.dev.Kick(r.index)
	return nil
}
