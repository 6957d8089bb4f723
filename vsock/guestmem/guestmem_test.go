package guestmem

import (
	"errors"
	"math"
	"testing"

	"golang.org/x/sys/unix"
)

func twoRegions(t *testing.T) *Memory {
	t.Helper()
	m, err := FromBytes([]RegionDesc{
		{GuestPhysAddr: 0, Size: 0x1000, UserAddr: 0x7000_0000},
		{GuestPhysAddr: 0x10000, Size: 0x2000, UserAddr: 0x8000_0000},
	}, [][]byte{make([]byte, 0x1000), make([]byte, 0x2000)})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSliceBounds(t *testing.T) {
	m := twoRegions(t)
	for _, tc := range []struct {
		gpa, n uint64
		ok     bool
	}{
		{0, 0x1000, true},
		{0xfff, 1, true},
		{0x1000, 0, true}, // empty range at the end of a region
		{0xfff, 2, false}, // crosses the end
		{0x1000, 1, false},
		{0x10000, 0x2000, true},
		{0x11000, 0x1001, false},
		{0x10000 - 1, 2, false}, // starts in a hole
		{math.MaxUint64, 2, false},
		{0x10000, math.MaxUint64, false},
		{0x10001, math.MaxUint64 - 0x10000, false}, // gpa+n overflows
	} {
		b, err := m.Slice(tc.gpa, tc.n)
		if tc.ok != (err == nil) {
			t.Errorf("Slice(%#x, %#x): %v, want ok=%v", tc.gpa, tc.n, err, tc.ok)
			continue
		}
		if err == nil && (uint64(len(b)) != tc.n || uint64(cap(b)) != tc.n) {
			t.Errorf("Slice(%#x, %#x): len %d cap %d", tc.gpa, tc.n, len(b), cap(b))
		}
		if err != nil && !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %#x): %v, want ErrOutOfRange", tc.gpa, tc.n, err)
		}
	}
}

func TestReadWrite(t *testing.T) {
	m := twoRegions(t)
	if err := m.Write(0x10ffe, []byte("abcd")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if err := m.Read(got, 0x10ffe); err != nil || string(got) != "abcd" {
		t.Fatalf("read %q, %v", got, err)
	}
	if err := m.Write(0xffe, []byte("abcd")); err == nil {
		t.Fatal("write across a region end succeeded")
	}
}

func TestUserToGuest(t *testing.T) {
	m := twoRegions(t)
	if gpa, err := m.UserToGuest(0x8000_0010, 0x100); err != nil || gpa != 0x10010 {
		t.Fatalf("UserToGuest: %#x, %v", gpa, err)
	}
	for _, va := range []uint64{0x6fff_ffff, 0x7000_0fff + 1, 0x8000_1f00} {
		if _, err := m.UserToGuest(va, 0x200); err == nil {
			t.Errorf("UserToGuest(%#x) outside every region succeeded", va)
		}
	}
}

func TestInvalidTables(t *testing.T) {
	for name, descs := range map[string][]RegionDesc{
		"size 0":      {{GuestPhysAddr: 0, Size: 0}},
		"gpa wraps":   {{GuestPhysAddr: math.MaxUint64 - 10, Size: 0x1000}},
		"user wraps":  {{UserAddr: math.MaxUint64 - 10, Size: 0x1000}},
		"overlapping": {{GuestPhysAddr: 0, Size: 0x2000}, {GuestPhysAddr: 0x1000, Size: 0x1000}},
	} {
		bufs := make([][]byte, len(descs))
		for i, d := range descs {
			if d.Size < 1<<20 {
				bufs[i] = make([]byte, d.Size)
			}
		}
		if _, err := FromBytes(descs, bufs); err == nil {
			t.Errorf("%s: table accepted", name)
		}
	}
}

func TestMapMemfd(t *testing.T) {
	fd, err := unix.MemfdCreate("guestmem-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 0x3000); err != nil {
		t.Fatal(err)
	}
	// A region that starts inside the file, off a page boundary.
	m, err := Map([]RegionDesc{{GuestPhysAddr: 0x100000, Size: 0x1000, UserAddr: 0x7f00_0000_0000, MmapOffset: 0x1800}}, []int{fd})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Write(0x100000, []byte("memfd")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := unix.Pread(fd, got, 0x1800); err != nil || string(got) != "memfd" {
		t.Fatalf("file holds %q, %v: the mapping is at the wrong offset", got, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Slice(0x100000, 1); err == nil {
		t.Fatal("slice after Close succeeded")
	}
	if _, err := Map([]RegionDesc{{Size: 0x1000}}, []int{-1}); err == nil {
		t.Fatal("mapping a bad descriptor succeeded")
	}
}
