// Package virtq implements the device side of a virtio split virtqueue over
// guest memory (virtio 1.2, section 2.7).
//
// The guest owns the descriptor table and the available ring and may change
// them at any moment, so every index and address read from them is checked:
// the available index may run at most the queue size ahead of us
// (avail_idx - next_avail <= size), a descriptor chain is at most the queue
// size long (which also ends loops), every buffer lies inside guest memory,
// lengths are summed without overflow, and indirect descriptors are refused
// because the device does not offer VIRTIO_RING_F_INDIRECT_DESC.
package virtq

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/vmpod/vmpod/vsock/guestmem"
)

// Ring flags (without VIRTIO_RING_F_EVENT_IDX, which the device does not
// offer, they are how either side asks the other not to signal).
const (
	// UsedFNoNotify, in the used ring, asks the driver not to kick.
	UsedFNoNotify = 1
	// AvailFNoInterrupt, in the available ring, asks the device not to
	// interrupt.
	AvailFNoInterrupt = 1
)

// Descriptor flags.
const (
	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4
)

// MaxSize is the largest queue size virtio allows.
const MaxSize = 32768

// MaxChainBytes bounds the total length of one chain.
const MaxChainBytes = 1 << 32

// ErrIndex means the guest's available index is impossible; the queue is
// unusable until the driver resets it.
var ErrIndex = errors.New("virtqueue available index out of range")

// Queue is one split virtqueue. It is not safe for concurrent use.
type Queue struct {
	mem       *guestmem.Memory
	size      uint16
	desc      []byte // size * 16
	avail     []byte // 4 + 2*size (+2 used_event, unused)
	used      []byte // 4 + 8*size (+2 avail_event, unused)
	nextAvail uint16
	nextUsed  uint16
	usedFlags uint16 // the used ring's flags as we last wrote them
}

// Config locates a queue in guest memory.
type Config struct {
	Size      uint16 // number of descriptors, a power of two
	DescAddr  uint64 // guest physical addresses
	AvailAddr uint64
	UsedAddr  uint64
	NextAvail uint16 // where to resume (SET_VRING_BASE)
}

// New checks cfg against mem and returns the queue. The used index resumes
// from the one found in the used ring, so a restarted queue continues
// where it stopped.
func New(mem *guestmem.Memory, cfg Config) (*Queue, error) {
	n := uint64(cfg.Size)
	if n == 0 || n > MaxSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("virtqueue size %d is not a power of two in [1, %d]", n, MaxSize)
	}
	if cfg.DescAddr%16 != 0 || cfg.AvailAddr%2 != 0 || cfg.UsedAddr%4 != 0 {
		return nil, fmt.Errorf("virtqueue rings misaligned: desc %#x avail %#x used %#x", cfg.DescAddr, cfg.AvailAddr, cfg.UsedAddr)
	}
	q := &Queue{mem: mem, size: cfg.Size, nextAvail: cfg.NextAvail}
	var err error
	if q.desc, err = mem.Slice(cfg.DescAddr, 16*n); err != nil {
		return nil, fmt.Errorf("descriptor table: %w", err)
	}
	if q.avail, err = mem.Slice(cfg.AvailAddr, 4+2*n); err != nil {
		return nil, fmt.Errorf("available ring: %w", err)
	}
	if q.used, err = mem.Slice(cfg.UsedAddr, 4+8*n); err != nil {
		return nil, fmt.Errorf("used ring: %w", err)
	}
	// The used index is published with one 32-bit atomic store; it must
	// not straddle a cache line (split locks can be fatal).
	if uintptr(unsafe.Pointer(&q.used[0]))%4 != 0 {
		return nil, fmt.Errorf("used ring at %#x is not 4-byte aligned in this process", cfg.UsedAddr)
	}
	q.nextUsed = binary.LittleEndian.Uint16(q.used[2:4])
	// Kicks on: a queue stopped while it had them off must not stay silent.
	q.storeUsedWord()
	return q, nil
}

// Size is the number of descriptors.
func (q *Queue) Size() uint16 { return q.size }

// NextAvail is the index of the next available entry to consume
// (GET_VRING_BASE).
func (q *Queue) NextAvail() uint16 { return q.nextAvail }

// load32 reads a 4-byte ring word in one access, so that the guest's
// concurrent 16-bit index update is seen whole. On amd64 and arm64 an
// atomic load also orders the later reads of ring entries after it.
func load32(b []byte) uint32 {
	p := unsafe.Pointer(&b[0])
	if uintptr(p)%4 == 0 {
		return atomic.LoadUint32((*uint32)(p))
	}
	return binary.LittleEndian.Uint32(b)
}

// availIdx is the guest's available index.
func (q *Queue) availIdx() uint16 { return uint16(load32(q.avail[0:4]) >> 16) }

// Pending reports how many chains the guest has made available.
func (q *Queue) Pending() (uint16, error) {
	n := q.availIdx() - q.nextAvail
	if n > q.size {
		return 0, fmt.Errorf("%w: avail %d next %d size %d", ErrIndex, n+q.nextAvail, q.nextAvail, q.size)
	}
	return n, nil
}

// Pop takes the next available chain. ok is false when none is available.
// A chain that fails validation is returned with Err set; the caller must
// still give it back with AddUsed(c.Head, 0) so the guest can reuse it. An
// error return (with ok false) means the queue itself is broken.
func (q *Queue) Pop() (c *Chain, ok bool, err error) {
	c = new(Chain)
	if ok, err = q.PopInto(c); !ok {
		return nil, false, err
	}
	return c, true, nil
}

// PopInto is Pop into a chain the caller reuses: its buffer lists keep
// their storage, so that taking a packet allocates nothing.
func (q *Queue) PopInto(c *Chain) (ok bool, err error) {
	n, err := q.Pending()
	if err != nil || n == 0 {
		return false, err
	}
	slot := 4 + 2*uint64(q.nextAvail%q.size)
	head := binary.LittleEndian.Uint16(q.avail[slot : slot+2])
	q.nextAvail++
	c.Head, c.Readable, c.Writable, c.Err = head, c.Readable[:0], c.Writable[:0], nil
	if head >= q.size {
		c.Err = fmt.Errorf("head descriptor %d out of range (queue size %d)", head, q.size)
		return true, nil
	}
	c.Err = q.walk(c)
	return true, nil
}

// walk reads the chain starting at c.Head into c.
func (q *Queue) walk(c *Chain) error {
	idx := c.Head
	var total uint64
	for ttl := int(q.size); ; ttl-- {
		if ttl == 0 {
			return fmt.Errorf("descriptor chain from %d longer than queue size %d", c.Head, q.size)
		}
		d := q.desc[16*uint64(idx):][:16]
		addr := binary.LittleEndian.Uint64(d[0:8])
		length := binary.LittleEndian.Uint32(d[8:12])
		flags := binary.LittleEndian.Uint16(d[12:14])
		next := binary.LittleEndian.Uint16(d[14:16])
		if flags&DescFIndirect != 0 {
			return fmt.Errorf("descriptor %d: indirect descriptors not negotiated", idx)
		}
		total += uint64(length)
		if total >= MaxChainBytes {
			return fmt.Errorf("descriptor chain from %d: total length overflows", c.Head)
		}
		buf, err := q.mem.Slice(addr, uint64(length))
		if err != nil {
			return fmt.Errorf("descriptor %d: %w", idx, err)
		}
		if flags&DescFWrite != 0 {
			c.Writable = append(c.Writable, buf)
		} else {
			if len(c.Writable) > 0 {
				return fmt.Errorf("descriptor %d: device-readable after device-writable", idx)
			}
			c.Readable = append(c.Readable, buf)
		}
		if flags&DescFNext == 0 {
			return nil
		}
		if next >= q.size {
			return fmt.Errorf("descriptor %d: next %d out of range (queue size %d)", idx, next, q.size)
		}
		idx = next
	}
}

// AddUsed returns chain head to the guest with n bytes written.
func (q *Queue) AddUsed(head uint16, n uint32) error {
	if head >= q.size {
		return fmt.Errorf("used descriptor %d out of range (queue size %d)", head, q.size)
	}
	slot := 4 + 8*uint64(q.nextUsed%q.size)
	binary.LittleEndian.PutUint32(q.used[slot:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[slot+4:], n)
	q.nextUsed++
	// The element must be visible before the index; the atomic store is a
	// full barrier on amd64.
	q.storeUsedWord()
	return nil
}

// storeUsedWord publishes the used ring's flags and index in one store.
func (q *Queue) storeUsedWord() {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&q.used[0])), uint32(q.nextUsed)<<16|uint32(q.usedFlags))
}

// SetNotify asks the guest to kick the device for new buffers (on) or to
// spare itself the kicks (off) while the device is draining the queue
// anyway. After turning kicks back on, the caller must check Pending once
// more: a chain added just before may have come without a kick. The store
// is a full barrier, so that check sees it.
func (q *Queue) SetNotify(on bool) {
	if on {
		q.usedFlags &^= UsedFNoNotify
	} else {
		q.usedFlags |= UsedFNoNotify
	}
	q.storeUsedWord()
}

// WantsInterrupt reports whether the guest wants an interrupt for the
// chains used so far: false while it has interrupts off because it is
// polling the used ring. Call it after AddUsed, whose store orders this
// read after the used index the guest will re-check on turning them on.
func (q *Queue) WantsInterrupt() bool {
	return load32(q.avail[0:4])&AvailFNoInterrupt == 0
}

// Chain is one descriptor chain: device-readable buffers, then
// device-writable ones, each a view into guest memory.
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
	Err      error // why the chain is unusable, if it is
}

// ReadableLen is the total length of the readable buffers.
func (c *Chain) ReadableLen() int { return totalLen(c.Readable) }

// WritableLen is the total length of the writable buffers.
func (c *Chain) WritableLen() int { return totalLen(c.Writable) }

func totalLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// CopyOut copies readable bytes starting at offset off into dst and returns
// how many it copied.
func (c *Chain) CopyOut(dst []byte, off int) int {
	return gather(dst, c.Readable, off)
}

// CopyIn copies src into the writable buffers starting at offset off and
// returns how many bytes it copied.
func (c *Chain) CopyIn(src []byte, off int) int {
	n := 0
	for _, b := range c.Writable {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		k := copy(b[off:], src[n:])
		n += k
		off = 0
		if n == len(src) {
			break
		}
	}
	return n
}

func gather(dst []byte, bufs [][]byte, off int) int {
	n := 0
	for _, b := range bufs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		k := copy(dst[n:], b[off:])
		n += k
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}
