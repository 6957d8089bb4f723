// Package testdriver plays QEMU and the guest's virtio driver for the
// vsock backend's tests: it shares a memfd as guest memory over a real
// vhost-user socket, lays out split virtqueues in it, posts buffers, kicks
// and waits for interrupts, the way a frontend and a guest would.
package testdriver

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/vsock/guestmem"
	"github.com/vmpod/vmpod/vsock/vhostuser"
	"github.com/vmpod/vmpod/vsock/virtq"
)

// Guest memory layout.
const (
	GuestBase = 0x100000       // first guest physical address
	UserBase  = 0x7f0000000000 // the "frontend's" virtual address of GuestBase
	MemSize   = 8 << 20
)

// Memory is a memfd acting as guest RAM, mapped into the test.
type Memory struct {
	FD   int
	Buf  []byte
	next uint64 // bump allocator, offset into Buf
}

// NewMemory creates guest memory; it is released when t ends.
func NewMemory(t testing.TB) *Memory {
	t.Helper()
	fd, err := unix.MemfdCreate("vsock-test-guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, MemSize); err != nil {
		t.Fatal(err)
	}
	buf, err := unix.Mmap(fd, 0, MemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Munmap(buf)
		unix.Close(fd)
	})
	return &Memory{FD: fd, Buf: buf}
}

// Region describes the memory as the frontend sends it.
func (m *Memory) Region() guestmem.RegionDesc {
	return guestmem.RegionDesc{GuestPhysAddr: GuestBase, Size: MemSize, UserAddr: UserBase}
}

// Guestmem views the memory the way the backend does, without mapping it
// again.
func (m *Memory) Guestmem() *guestmem.Memory {
	gm, err := guestmem.FromBytes([]guestmem.RegionDesc{m.Region()}, [][]byte{m.Buf})
	if err != nil {
		panic(err)
	}
	return gm
}

// Alloc reserves n bytes aligned to align and returns their guest address.
func (m *Memory) Alloc(n, align uint64) uint64 {
	m.next = (m.next + align - 1) &^ (align - 1)
	off := m.next
	m.next += n
	if m.next > MemSize {
		panic("testdriver: guest memory exhausted")
	}
	return GuestBase + off
}

// At is the memory at guest address gpa.
func (m *Memory) At(gpa uint64, n int) []byte {
	off := gpa - GuestBase
	return m.Buf[off : off+uint64(n)]
}

// Ring is the driver's side of one split virtqueue.
type Ring struct {
	M                     *Memory
	Size                  uint16
	Desc, Avail, Used     uint64
	free                  []uint16
	availIdx, lastUsedIdx uint16
}

// NewRing lays out a queue of size descriptors.
func (m *Memory) NewRing(size uint16) *Ring {
	n := uint64(size)
	r := &Ring{M: m, Size: size}
	r.Desc = m.Alloc(16*n, 16)
	r.Avail = m.Alloc(6+2*n, 2)
	r.Used = m.Alloc(6+8*n, 4)
	for i := range size {
		r.free = append(r.free, i)
	}
	return r
}

// Config is the queue as the backend should see it.
func (r *Ring) Config() virtq.Config {
	return virtq.Config{Size: r.Size, DescAddr: r.Desc, AvailAddr: r.Avail, UsedAddr: r.Used}
}

// SetDesc writes descriptor i.
func (r *Ring) SetDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	d := r.M.At(r.Desc+16*uint64(i), 16)
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// Publish makes head available.
func (r *Ring) Publish(head uint16) {
	slot := r.Avail + 4 + 2*uint64(r.availIdx%r.Size)
	binary.LittleEndian.PutUint16(r.M.At(slot, 2), head)
	r.availIdx++
	binary.LittleEndian.PutUint16(r.M.At(r.Avail+2, 2), r.availIdx)
}

// SetAvailIdx overwrites the available index (to play a broken driver).
func (r *Ring) SetAvailIdx(v uint16) {
	r.availIdx = v
	binary.LittleEndian.PutUint16(r.M.At(r.Avail+2, 2), v)
}

// Buf is one buffer of a chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// AddChain writes a chain of bufs with descriptors from the free list and
// publishes it. It returns the head, or false when descriptors ran out.
func (r *Ring) AddChain(bufs []Buf) (uint16, bool) {
	if len(bufs) == 0 || len(bufs) > len(r.free) {
		return 0, false
	}
	ids := r.free[:len(bufs)]
	r.free = r.free[len(bufs):]
	for i, b := range bufs {
		var flags, next uint16
		if b.Write {
			flags |= virtq.DescFWrite
		}
		if i+1 < len(bufs) {
			flags |= virtq.DescFNext
			next = ids[i+1]
		}
		r.SetDesc(ids[i], b.Addr, b.Len, flags, next)
	}
	r.Publish(ids[0])
	return ids[0], true
}

// Used is one used-ring element.
type Used struct {
	Head uint16
	Len  uint32
}

// TakeUsed returns the elements the device added since the last call and
// frees their descriptors (following the chains as the driver wrote them).
func (r *Ring) TakeUsed() []Used {
	idx := binary.LittleEndian.Uint16(r.M.At(r.Used+2, 2))
	var out []Used
	for r.lastUsedIdx != idx {
		e := r.M.At(r.Used+4+8*uint64(r.lastUsedIdx%r.Size), 8)
		u := Used{Head: uint16(binary.LittleEndian.Uint32(e)), Len: binary.LittleEndian.Uint32(e[4:])}
		out = append(out, u)
		r.lastUsedIdx++
		r.freeChain(u.Head)
	}
	return out
}

func (r *Ring) freeChain(head uint16) {
	i := head
	for n := 0; n < int(r.Size) && i < r.Size; n++ {
		d := r.M.At(r.Desc+16*uint64(i), 16)
		r.free = append(r.free, i)
		if binary.LittleEndian.Uint16(d[12:])&virtq.DescFNext == 0 {
			return
		}
		i = binary.LittleEndian.Uint16(d[14:])
	}
}

// Frontend is a fake vhost-user frontend connected to a backend.
type Frontend struct {
	t     testing.TB
	Conn  *net.UnixConn
	Mem   *Memory
	Rings []*Ring
	Kicks []int // eventfds
	Calls []int
	Done  chan error // Serve's result
}

// Connect starts serve (normally vhostuser.Serve with the device) on one
// end of a socketpair and returns the frontend on the other end, with
// nothing negotiated yet.
func Connect(t testing.TB, serve func(ctx context.Context, c *net.UnixConn) error) *Frontend {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	toConn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "vhost-user")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	backend, front := toConn(fds[0]), toConn(fds[1])
	ctx, cancel := context.WithCancel(context.Background())
	f := &Frontend{t: t, Conn: front, Mem: NewMemory(t), Done: make(chan error, 1)}
	go func() {
		err := serve(ctx, backend)
		backend.Close()
		f.Done <- err
	}()
	t.Cleanup(func() {
		cancel()
		front.Close()
		select {
		case <-f.Done:
		case <-time.After(10 * time.Second):
			t.Error("backend did not stop within 10s")
		}
		for _, fd := range append(f.Kicks, f.Calls...) {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
	return f
}

// Dial connects to a backend listening on the Unix socket at path, as
// QEMU does. done receives the backend's Serve result, which the caller
// runs.
func Dial(t testing.TB, path string) *Frontend {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("connect to backend %s: %v", path, err)
	}
	f := &Frontend{t: t, Conn: c, Mem: NewMemory(t)}
	t.Cleanup(func() {
		c.Close()
		for _, fd := range append(f.Kicks, f.Calls...) {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
	return f
}

// Send writes one request with optional descriptors.
func (f *Frontend) Send(req vhostuser.Request, flags uint32, payload []byte, fds ...int) error {
	msg := binary.LittleEndian.AppendUint32(nil, uint32(req))
	msg = binary.LittleEndian.AppendUint32(msg, 1|flags)
	msg = binary.LittleEndian.AppendUint32(msg, uint32(len(payload)))
	msg = append(msg, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := f.Conn.WriteMsgUnix(msg, oob, nil)
	return err
}

// Reply reads one reply and checks it answers req.
func (f *Frontend) Reply(req vhostuser.Request) ([]byte, error) {
	f.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [12]byte
	if _, err := io.ReadFull(f.Conn, h[:]); err != nil {
		return nil, fmt.Errorf("reply to %v: %w", req, err)
	}
	if got := vhostuser.Request(binary.LittleEndian.Uint32(h[:])); got != req {
		return nil, fmt.Errorf("reply to %v is for %v", req, got)
	}
	if fl := binary.LittleEndian.Uint32(h[4:]); fl != 0x5 {
		return nil, fmt.Errorf("reply to %v has flags %#x", req, fl)
	}
	p := make([]byte, binary.LittleEndian.Uint32(h[8:]))
	_, err := io.ReadFull(f.Conn, p)
	return p, err
}

// Call sends req and, with reply, waits for the answer; with needAck it
// asks for and checks a REPLY_ACK.
func (f *Frontend) Call(req vhostuser.Request, payload []byte, reply bool, fds ...int) []byte {
	f.t.Helper()
	flags := uint32(0)
	if !reply {
		flags = 0x8 // NEED_REPLY: every request is acknowledged, which orders the test
	}
	if err := f.Send(req, flags, payload, fds...); err != nil {
		f.t.Fatalf("send %v: %v", req, err)
	}
	p, err := f.Reply(req)
	if err != nil {
		f.t.Fatal(err)
	}
	if !reply && (len(p) != 8 || binary.LittleEndian.Uint64(p) != 0) {
		f.t.Fatalf("%v: ack %x, want 0", req, p)
	}
	return p
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(i, n uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, i), n)
}

// Setup negotiates, shares memory and starts queues of the given size, as
// QEMU 7.2 does for vhost-user-vsock-pci. It returns the config space.
func (f *Frontend) Setup(nqueues int, size uint16) []byte {
	f.t.Helper()
	t := f.t
	// Before REPLY_ACK is negotiated only requests with replies are sent
	// with a wait, as QEMU does.
	if err := f.Send(vhostuser.GetFeatures, 0, nil); err != nil {
		t.Fatal(err)
	}
	p, err := f.Reply(vhostuser.GetFeatures)
	if err != nil {
		t.Fatal(err)
	}
	features := binary.LittleEndian.Uint64(p)
	if features&vhostuser.FeatureProtocolFeatures == 0 || features&vhostuser.FeatureVersion1 == 0 {
		t.Fatalf("features %#x lack PROTOCOL_FEATURES or VERSION_1", features)
	}
	if err := f.Send(vhostuser.GetProtocolFeatures, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Reply(vhostuser.GetProtocolFeatures); err != nil {
		t.Fatal(err)
	}
	if err := f.Send(vhostuser.SetProtocolFeatures, 0, u64(vhostuser.ProtocolReplyAck|vhostuser.ProtocolConfig)); err != nil {
		t.Fatal(err)
	}
	f.Call(vhostuser.SetOwner, nil, false)
	cfg := f.Call(vhostuser.GetConfig, append(state(0, 8), make([]byte, 4+8)...), true)
	f.Call(vhostuser.SetFeatures, u64(features), false)
	reg := f.Mem.Region()
	mt := state(1, 0)
	for _, v := range []uint64{reg.GuestPhysAddr, reg.Size, reg.UserAddr, reg.MmapOffset} {
		mt = binary.LittleEndian.AppendUint64(mt, v)
	}
	f.Call(vhostuser.SetMemTable, mt, false, f.Mem.FD)
	for i := range nqueues {
		f.Rings = append(f.Rings, f.Mem.NewRing(size))
		call, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		f.Calls = append(f.Calls, call)
		f.Kicks = append(f.Kicks, -1)
		f.Call(vhostuser.SetVringCall, u64(uint64(i)), false, call)
		f.StartRing(i, 0)
	}
	return cfg
}

// StartRing (re)starts vring i at base with a fresh kick eventfd, as QEMU
// does when the guest's driver starts or the VM resumes.
func (f *Frontend) StartRing(i int, base uint16) {
	f.t.Helper()
	r := f.Rings[i]
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		f.t.Fatal(err)
	}
	if f.Kicks[i] >= 0 {
		unix.Close(f.Kicks[i])
	}
	f.Kicks[i] = kick
	f.Call(vhostuser.SetVringNum, state(uint32(i), uint32(r.Size)), false)
	f.Call(vhostuser.SetVringBase, state(uint32(i), uint32(base)), false)
	addr := state(uint32(i), 0)
	for _, gpa := range []uint64{r.Desc, r.Used, r.Avail, 0} {
		va := uint64(0)
		if gpa != 0 {
			va = gpa - GuestBase + UserBase
		}
		addr = binary.LittleEndian.AppendUint64(addr, va)
	}
	f.Call(vhostuser.SetVringAddr, addr, false)
	f.Call(vhostuser.SetVringKick, u64(uint64(i)), false, kick)
	f.Call(vhostuser.SetVringEnable, state(uint32(i), 1), false)
}

// StopRing stops vring i (GET_VRING_BASE), as QEMU does when the VM
// pauses, and returns where the backend stopped.
func (f *Frontend) StopRing(i int) uint16 {
	f.t.Helper()
	p := f.Call(vhostuser.GetVringBase, state(uint32(i), 0), true)
	if len(p) != 8 || binary.LittleEndian.Uint32(p) != uint32(i) {
		f.t.Fatalf("GET_VRING_BASE reply %x", p)
	}
	return uint16(binary.LittleEndian.Uint32(p[4:]))
}

// Kick notifies queue i.
func (f *Frontend) Kick(i int) {
	f.t.Helper()
	if _, err := unix.Write(f.Kicks[i], u64(1)); err != nil {
		f.t.Fatalf("kick queue %d: %v", i, err)
	}
}

// WaitCall waits up to d for an interrupt on queue i.
func (f *Frontend) WaitCall(i int, d time.Duration) bool {
	pfd := []unix.PollFd{{Fd: int32(f.Calls[i]), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, int(d/time.Millisecond))
	if err != nil || n == 0 {
		return false
	}
	var b [8]byte
	unix.Read(f.Calls[i], b[:])
	return true
}
