package device

// ring is a fixed-capacity byte FIFO, allocated on first use so that idle
// connections cost nothing.
type ring struct {
	buf  []byte
	cap  int
	r, n int
}

func newRing(capacity int) ring { return ring{cap: capacity} }

func (b *ring) Len() int  { return b.n }
func (b *ring) Free() int { return b.cap - b.n }

// Write appends as much of p as fits and returns how much it took.
func (b *ring) Write(p []byte) int {
	if b.buf == nil && len(p) > 0 {
		b.buf = make([]byte, b.cap)
	}
	total := 0
	for len(p) > 0 && b.n < b.cap {
		w := (b.r + b.n) % b.cap
		end := b.cap
		if w < b.r {
			end = b.r
		}
		k := copy(b.buf[w:end], p)
		b.n += k
		total += k
		p = p[k:]
	}
	return total
}

// Peek returns up to n buffered bytes as at most two slices, without
// consuming them.
func (b *ring) Peek(n int) (first, second []byte) {
	if n > b.n {
		n = b.n
	}
	if n == 0 {
		return nil, nil
	}
	end := b.r + n
	if end <= b.cap {
		return b.buf[b.r:end], nil
	}
	return b.buf[b.r:], b.buf[:end-b.cap]
}

// Discard consumes n buffered bytes.
func (b *ring) Discard(n int) {
	if n > b.n {
		n = b.n
	}
	b.r = (b.r + n) % b.cap
	b.n -= n
	if b.n == 0 {
		b.r = 0
	}
}

// Read moves buffered bytes into p.
func (b *ring) Read(p []byte) int {
	f, s := b.Peek(len(p))
	n := copy(p, f)
	n += copy(p[n:], s)
	b.Discard(n)
	return n
}

// Release drops the buffer.
func (b *ring) Release() { b.buf, b.r, b.n = nil, 0, 0 }

// WriteFunc appends up to n bytes that fill copies into the free space; fill
// gets a destination and the offset of that destination within the n
// bytes, and returns how many it copied.
func (b *ring) WriteFunc(n int, fill func(dst []byte, off int) int) int {
	if b.buf == nil && n > 0 {
		b.buf = make([]byte, b.cap)
	}
	total := 0
	for total < n && b.n < b.cap {
		w := (b.r + b.n) % b.cap
		end := b.cap
		if w < b.r {
			end = b.r
		}
		if end-w > n-total {
			end = w + n - total
		}
		k := fill(b.buf[w:end], total)
		if k <= 0 {
			break
		}
		b.n += k
		total += k
	}
	return total
}

// fifo is a queue whose storage is reused once drained, so that a steady
// stream of pushes and pops does not allocate.
type fifo[T any] struct {
	buf  []T
	head int
}

func (f *fifo[T]) len() int { return len(f.buf) - f.head }

func (f *fifo[T]) peek() T { return f.buf[f.head] }

func (f *fifo[T]) push(v T) {
	if f.head > 0 && len(f.buf) == cap(f.buf) {
		// Full at the back with room at the front: slide down.
		n := copy(f.buf, f.buf[f.head:])
		clear(f.buf[n:])
		f.buf, f.head = f.buf[:n], 0
	}
	f.buf = append(f.buf, v)
}

func (f *fifo[T]) pop() T {
	var zero T
	v := f.buf[f.head]
	f.buf[f.head] = zero // no stale pointer keeps a closed Conn alive
	f.head++
	if f.head == len(f.buf) {
		f.buf, f.head = f.buf[:0], 0
	}
	return v
}

func (f *fifo[T]) reset() { clear(f.buf); f.buf, f.head = f.buf[:0], 0 }
