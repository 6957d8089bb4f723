package virtq_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/vmpod/vmpod/vsock/guestmem"
	"github.com/vmpod/vmpod/vsock/internal/testdriver"
	"github.com/vmpod/vmpod/vsock/virtq"
)

func newQueue(t *testing.T, size uint16) (*testdriver.Ring, *virtq.Queue) {
	t.Helper()
	m := testdriver.NewMemory(t)
	r := m.NewRing(size)
	q, err := virtq.New(m.Guestmem(), r.Config())
	if err != nil {
		t.Fatal(err)
	}
	return r, q
}

func TestChainWalk(t *testing.T) {
	r, q := newQueue(t, 8)
	a, b, c := r.M.Alloc(10, 8), r.M.Alloc(20, 8), r.M.Alloc(30, 8)
	copy(r.M.At(a, 10), "0123456789")
	copy(r.M.At(b, 20), "abcdefghijklmnopqrst")
	head, _ := r.AddChain([]testdriver.Buf{{Addr: a, Len: 10}, {Addr: b, Len: 20}, {Addr: c, Len: 30, Write: true}})
	ch, ok, err := q.Pop()
	if err != nil || !ok || ch.Err != nil {
		t.Fatalf("Pop: %v %v %v", ok, err, ch.Err)
	}
	if ch.Head != head || ch.ReadableLen() != 30 || ch.WritableLen() != 30 {
		t.Fatalf("chain head %d readable %d writable %d", ch.Head, ch.ReadableLen(), ch.WritableLen())
	}
	got := make([]byte, 6)
	if n := ch.CopyOut(got, 7); n != 6 || string(got) != "789abc" {
		t.Fatalf("CopyOut across descriptors: %q", got[:n])
	}
	if n := ch.CopyIn([]byte("xyz"), 28); n != 2 {
		t.Fatalf("CopyIn past the end copied %d", n)
	}
	if _, ok, _ := q.Pop(); ok {
		t.Fatal("second Pop found a chain")
	}
	if err := q.AddUsed(ch.Head, 5); err != nil {
		t.Fatal(err)
	}
	if u := r.TakeUsed(); len(u) != 1 || u[0].Head != head || u[0].Len != 5 {
		t.Fatalf("used ring %v", u)
	}
	if err := q.AddUsed(8, 0); err == nil {
		t.Fatal("AddUsed accepted a head beyond the queue")
	}
}

func TestBadChains(t *testing.T) {
	for name, setup := range map[string]func(r *testdriver.Ring){
		"loop": func(r *testdriver.Ring) {
			r.SetDesc(0, testdriver.GuestBase, 1, virtq.DescFNext, 1)
			r.SetDesc(1, testdriver.GuestBase, 1, virtq.DescFNext, 0)
			r.Publish(0)
		},
		"self loop": func(r *testdriver.Ring) {
			r.SetDesc(3, testdriver.GuestBase, 1, virtq.DescFNext, 3)
			r.Publish(3)
		},
		"next out of range": func(r *testdriver.Ring) {
			r.SetDesc(0, testdriver.GuestBase, 1, virtq.DescFNext, 100)
			r.Publish(0)
		},
		"head out of range": func(r *testdriver.Ring) { r.Publish(9) },
		"outside memory": func(r *testdriver.Ring) {
			r.SetDesc(0, 0x1000, 16, 0, 0)
			r.Publish(0)
		},
		"length wraps address": func(r *testdriver.Ring) {
			r.SetDesc(0, 0xffff_ffff_ffff_fff0, 0x20, 0, 0)
			r.Publish(0)
		},
		"indirect": func(r *testdriver.Ring) {
			r.SetDesc(0, testdriver.GuestBase, 16, virtq.DescFIndirect, 0)
			r.Publish(0)
		},
		"readable after writable": func(r *testdriver.Ring) {
			r.SetDesc(0, testdriver.GuestBase, 1, virtq.DescFWrite|virtq.DescFNext, 1)
			r.SetDesc(1, testdriver.GuestBase, 1, 0, 0)
			r.Publish(0)
		},
		"total length overflows": func(r *testdriver.Ring) {
			for i := range uint16(8) {
				r.SetDesc(i, testdriver.GuestBase, 0xffff_ffff, virtq.DescFNext, i+1)
			}
			r.Publish(0)
		},
	} {
		t.Run(name, func(t *testing.T) {
			r, q := newQueue(t, 8)
			setup(r)
			ch, ok, err := q.Pop()
			if err != nil || !ok {
				t.Fatalf("Pop: %v %v", ok, err)
			}
			if ch.Err == nil {
				t.Fatalf("bad chain accepted: %d readable, %d writable", len(ch.Readable), len(ch.Writable))
			}
		})
	}
}

func TestAvailIndexTooFarAhead(t *testing.T) {
	r, q := newQueue(t, 8)
	r.SetAvailIdx(9)
	if _, _, err := q.Pop(); !errors.Is(err, virtq.ErrIndex) {
		t.Fatalf("Pop with avail index 9 on a queue of 8: %v", err)
	}
}

func TestNewRejectsBadLayouts(t *testing.T) {
	m := testdriver.NewMemory(t)
	gm := m.Guestmem()
	base := uint64(testdriver.GuestBase)
	for name, cfg := range map[string]virtq.Config{
		"size 0":          {Size: 0, DescAddr: base, AvailAddr: base, UsedAddr: base},
		"size not pow2":   {Size: 3, DescAddr: base, AvailAddr: base, UsedAddr: base},
		"misaligned desc": {Size: 8, DescAddr: base + 8, AvailAddr: base, UsedAddr: base},
		"used outside":    {Size: 8, DescAddr: base, AvailAddr: base, UsedAddr: base + testdriver.MemSize - 8},
		"desc outside":    {Size: 8, DescAddr: 0, AvailAddr: base, UsedAddr: base},
	} {
		if _, err := virtq.New(gm, cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzDescriptorChain walks fuzzed descriptor tables and available rings:
// it must never panic, and every chain it accepts lies in guest memory.
func FuzzDescriptorChain(f *testing.F) {
	seed := make([]byte, 16*8+2+2*8)
	binary.LittleEndian.PutUint64(seed[0:], 0x1000)
	binary.LittleEndian.PutUint32(seed[8:], 64)
	binary.LittleEndian.PutUint16(seed[12:], virtq.DescFNext)
	binary.LittleEndian.PutUint16(seed[14:], 1)
	binary.LittleEndian.PutUint64(seed[16:], 0x2000)
	binary.LittleEndian.PutUint32(seed[24:], 64)
	binary.LittleEndian.PutUint16(seed[28:], virtq.DescFWrite)
	binary.LittleEndian.PutUint16(seed[128:], 1)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		const size = 8
		const memSize = 0x4000
		buf := make([]byte, memSize)
		m, err := guestmem.FromBytes([]guestmem.RegionDesc{{Size: memSize}}, [][]byte{buf})
		if err != nil {
			t.Fatal(err)
		}
		// Descriptor table at 0, avail ring at 0x100, used ring at 0x200.
		copy(buf[0:16*size], data)
		if len(data) > 16*size {
			copy(buf[0x102:0x104+2*size], data[16*size:])
		}
		q, err := virtq.New(m, virtq.Config{Size: size, DescAddr: 0, AvailAddr: 0x100, UsedAddr: 0x200})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2*size; i++ {
			ch, ok, err := q.Pop()
			if err != nil || !ok {
				return
			}
			if ch.Err == nil {
				if len(ch.Readable)+len(ch.Writable) > size {
					t.Fatalf("chain of %d descriptors in a queue of %d", len(ch.Readable)+len(ch.Writable), size)
				}
				ch.CopyOut(make([]byte, 64), 3)
				ch.CopyIn(make([]byte, 64), 5)
			}
			q.AddUsed(ch.Head, 0)
		}
	})
}

func TestPopIntoReusesTheChain(t *testing.T) {
	r, q := newQueue(t, 8)
	a, b := r.M.Alloc(16, 8), r.M.Alloc(16, 8)
	var c virtq.Chain
	r.AddChain([]testdriver.Buf{{Addr: a, Len: 16}, {Addr: b, Len: 16, Write: true}})
	if ok, err := q.PopInto(&c); !ok || err != nil || c.Err != nil || c.ReadableLen() != 16 || c.WritableLen() != 16 {
		t.Fatalf("PopInto: %v %v %+v", ok, err, c)
	}
	q.AddUsed(c.Head, 0)
	r.TakeUsed()
	// The next chain has only a readable buffer: nothing of the first one
	// may remain.
	r.AddChain([]testdriver.Buf{{Addr: b, Len: 8}})
	if ok, err := q.PopInto(&c); !ok || err != nil || c.Err != nil || c.ReadableLen() != 8 || c.WritableLen() != 0 {
		t.Fatalf("PopInto a second chain: %v %v, readable %d writable %d", ok, err, c.ReadableLen(), c.WritableLen())
	}
	if allocs := testing.AllocsPerRun(100, func() {
		q.AddUsed(c.Head, 0)
		r.TakeUsed()
		r.AddChain([]testdriver.Buf{{Addr: a, Len: 16}, {Addr: b, Len: 16}})
		q.PopInto(&c)
	}); allocs > 1 { // the driver's TakeUsed allocates its result
		t.Errorf("a pop costs %v allocations", allocs)
	}
}

func TestNotificationFlags(t *testing.T) {
	r, q := newQueue(t, 8)
	usedFlags := func() uint16 { return binary.LittleEndian.Uint16(r.M.At(r.Used, 2)) }
	q.SetNotify(false)
	if usedFlags()&virtq.UsedFNoNotify == 0 {
		t.Fatal("SetNotify(false) left kicks on")
	}
	// Publishing used chains keeps the flags.
	r.AddChain([]testdriver.Buf{{Addr: r.M.Alloc(8, 8), Len: 8}})
	c, _, _ := q.Pop()
	q.AddUsed(c.Head, 0)
	if usedFlags()&virtq.UsedFNoNotify == 0 || binary.LittleEndian.Uint16(r.M.At(r.Used+2, 2)) != 1 {
		t.Fatalf("after AddUsed: flags %#x", usedFlags())
	}
	q.SetNotify(true)
	if usedFlags() != 0 {
		t.Fatalf("SetNotify(true) left flags %#x", usedFlags())
	}
	if !q.WantsInterrupt() {
		t.Fatal("no interrupt wanted with the guest's flags clear")
	}
	binary.LittleEndian.PutUint16(r.M.At(r.Avail, 2), virtq.AvailFNoInterrupt)
	if q.WantsInterrupt() {
		t.Fatal("interrupt wanted while the guest has them off")
	}
	// A queue restarted (SET_VRING_BASE, then New) starts with kicks on.
	q.SetNotify(false)
	if _, err := virtq.New(r.M.Guestmem(), r.Config()); err != nil || usedFlags() != 0 {
		t.Fatalf("restarted queue: flags %#x, %v", usedFlags(), err)
	}
}
