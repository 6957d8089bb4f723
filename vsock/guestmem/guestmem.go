// Package guestmem gives checked access to a virtual machine's memory as the
// vhost-user frontend shares it: a table of regions, each a file descriptor
// (a memfd) mapped into this process.
//
// Every address the guest hands us is hostile. Nothing outside this package
// slices the mappings directly: Slice checks that [gpa, gpa+n) lies inside
// one region, with overflow-safe arithmetic, before returning a view.
package guestmem

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// MaxRegions bounds the memory table (vhost-user's VHOST_MEMORY_BASELINE_NREGIONS).
const MaxRegions = 8

// ErrOutOfRange reports a guest address range that no region covers.
var ErrOutOfRange = errors.New("guest address range outside guest memory")

// RegionDesc describes one region as the frontend sends it.
type RegionDesc struct {
	GuestPhysAddr uint64 // guest physical address of the region's start
	Size          uint64 // bytes
	UserAddr      uint64 // the frontend's virtual address of the region's start
	MmapOffset    uint64 // offset of the region within the file descriptor
}

// Region is one mapped region.
type Region struct {
	RegionDesc
	mapping []byte // whole mapping, page aligned
	data    []byte // the region proper: mapping[MmapOffset%page:][:Size]
}

// Memory is a mapped memory table. It is immutable once built; the owner
// replaces it as a whole when the frontend sends a new table.
type Memory struct {
	regions []Region
}

// Map maps every region from its file descriptor. It does not keep the
// descriptors; the caller closes them. On error nothing stays mapped.
func Map(descs []RegionDesc, fds []int) (*Memory, error) {
	if len(descs) != len(fds) {
		return nil, fmt.Errorf("memory table: %d regions but %d file descriptors", len(descs), len(fds))
	}
	if len(descs) > MaxRegions {
		return nil, fmt.Errorf("memory table: %d regions, at most %d", len(descs), MaxRegions)
	}
	m := &Memory{}
	for i, d := range descs {
		if err := validate(d, m.regions); err != nil {
			m.Close()
			return nil, fmt.Errorf("memory region %d: %w", i, err)
		}
		r, err := mapRegion(d, fds[i])
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("memory region %d (gpa %#x size %#x): %w", i, d.GuestPhysAddr, d.Size, err)
		}
		m.regions = append(m.regions, r)
	}
	return m, nil
}

// FromBytes builds a Memory over caller-owned byte slices, one per region
// (UserAddr and MmapOffset are taken from descs, the data from bufs). Close
// does not unmap them. It serves tests and callers that map memory
// themselves.
func FromBytes(descs []RegionDesc, bufs [][]byte) (*Memory, error) {
	if len(descs) != len(bufs) {
		return nil, fmt.Errorf("memory table: %d regions but %d buffers", len(descs), len(bufs))
	}
	m := &Memory{}
	for i, d := range descs {
		if err := validate(d, m.regions); err != nil {
			return nil, fmt.Errorf("memory region %d: %w", i, err)
		}
		if uint64(len(bufs[i])) != d.Size {
			return nil, fmt.Errorf("memory region %d: buffer of %d bytes for size %#x", i, len(bufs[i]), d.Size)
		}
		m.regions = append(m.regions, Region{RegionDesc: d, data: bufs[i]})
	}
	return m, nil
}

func validate(d RegionDesc, prev []Region) error {
	if d.Size == 0 {
		return errors.New("size 0")
	}
	// Every end address must be representable, in all three address spaces.
	if d.GuestPhysAddr+d.Size < d.GuestPhysAddr || d.UserAddr+d.Size < d.UserAddr || d.MmapOffset+d.Size < d.MmapOffset {
		return fmt.Errorf("size %#x overflows an address", d.Size)
	}
	if d.Size > 1<<40 {
		return fmt.Errorf("size %#x too large", d.Size)
	}
	for _, p := range prev {
		if d.GuestPhysAddr < p.GuestPhysAddr+p.Size && p.GuestPhysAddr < d.GuestPhysAddr+d.Size {
			return fmt.Errorf("gpa %#x size %#x overlaps region at gpa %#x", d.GuestPhysAddr, d.Size, p.GuestPhysAddr)
		}
	}
	return nil
}

func mapRegion(d RegionDesc, fd int) (Region, error) {
	page := uint64(unix.Getpagesize())
	off := d.MmapOffset &^ (page - 1)
	skip := d.MmapOffset - off
	length := skip + d.Size
	if length < d.Size || int(length) < 0 || uint64(int(length)) != length {
		return Region{}, fmt.Errorf("mapping length overflows")
	}
	b, err := unix.Mmap(fd, int64(off), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return Region{}, fmt.Errorf("mmap fd %d offset %#x length %#x: %w", fd, off, length, err)
	}
	return Region{RegionDesc: d, mapping: b, data: b[skip : skip+d.Size]}, nil
}

// Close unmaps every region this Memory mapped. Slices obtained earlier must
// not be used afterwards.
func (m *Memory) Close() error {
	if m == nil {
		return nil
	}
	var errs []error
	for i := range m.regions {
		if m.regions[i].mapping != nil {
			if err := unix.Munmap(m.regions[i].mapping); err != nil {
				errs = append(errs, fmt.Errorf("munmap region %d: %w", i, err))
			}
		}
		m.regions[i].mapping, m.regions[i].data = nil, nil
	}
	m.regions = nil
	return errors.Join(errs...)
}

// Regions returns the region descriptions.
func (m *Memory) Regions() []RegionDesc {
	out := make([]RegionDesc, len(m.regions))
	for i, r := range m.regions {
		out[i] = r.RegionDesc
	}
	return out
}

// Slice returns a view of the n bytes at guest physical address gpa. The
// range must lie within a single region.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	if m != nil {
		for i := range m.regions {
			r := &m.regions[i]
			if gpa < r.GuestPhysAddr {
				continue
			}
			off := gpa - r.GuestPhysAddr
			if off >= r.Size && !(off == r.Size && n == 0) {
				continue
			}
			if n > r.Size-off {
				break
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: gpa %#x length %#x", ErrOutOfRange, gpa, n)
}

// Read copies len(dst) bytes from gpa into dst.
func (m *Memory) Read(dst []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(dst)))
	if err != nil {
		return err
	}
	copy(dst, s)
	return nil
}

// Write copies src to gpa.
func (m *Memory) Write(gpa uint64, src []byte) error {
	s, err := m.Slice(gpa, uint64(len(src)))
	if err != nil {
		return err
	}
	copy(s, src)
	return nil
}

// UserToGuest translates the frontend's virtual address va (as sent in
// SET_VRING_ADDR) of an n-byte range into a guest physical address. The
// range must lie within a single region.
func (m *Memory) UserToGuest(va, n uint64) (uint64, error) {
	if m != nil {
		for _, r := range m.regions {
			if va < r.UserAddr {
				continue
			}
			off := va - r.UserAddr
			if off < r.Size && n <= r.Size-off {
				return r.GuestPhysAddr + off, nil
			}
		}
	}
	return 0, fmt.Errorf("%w: frontend address %#x length %#x", ErrOutOfRange, va, n)
}
