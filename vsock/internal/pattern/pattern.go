// Package pattern generates deterministic test data, so that the host and
// the guest of a vsock test can produce and check the same stream without
// sending it twice.
package pattern

import "encoding/binary"

// Reader yields an endless pseudo-random byte stream (xorshift64*) that
// depends only on its seed.
type Reader struct {
	s   uint64
	buf [8]byte
	n   int // unread bytes in buf
}

// New returns the stream for seed.
func New(seed uint64) *Reader { return &Reader{s: seed*0x9e3779b97f4a7c15 | 1} }

// Read fills p; it never fails.
func (r *Reader) Read(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if r.n == 0 {
			r.s ^= r.s >> 12
			r.s ^= r.s << 25
			r.s ^= r.s >> 27
			binary.LittleEndian.PutUint64(r.buf[:], r.s*0x2545f4914f6cdd1d)
			r.n = 8
		}
		k := copy(p, r.buf[8-r.n:])
		r.n -= k
		p = p[k:]
	}
	return total, nil
}
