package device

import (
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock/virtq"
)

// FuzzPacket runs fuzzed packet sequences through the connection state
// machine, draining what the device answers into fake receive buffers and
// letting the host accept, read and write. It must never panic, and the
// bounds must hold: buffered data within the buffer size, connections
// within the limit, queued control packets within theirs.
func FuzzPacket(f *testing.F) {
	pkt := func(h Header, data string) []byte {
		h.Len = uint32(len(data))
		b := make([]byte, HeaderSize)
		h.Encode(b)
		return append(b, data...)
	}
	req := pkt(Header{SrcPort: 5, DstPort: 1, Type: TypeStream, Op: OpRequest, BufAlloc: 4096}, "")
	rw := pkt(Header{SrcPort: 5, DstPort: 1, Type: TypeStream, Op: OpRW, BufAlloc: 4096}, "hello")
	shut := pkt(Header{SrcPort: 5, DstPort: 1, Type: TypeStream, Op: OpShutdown, Flags: 3}, "")
	credit := pkt(Header{SrcPort: 5, DstPort: 1, Type: TypeStream, Op: OpCreditRequest}, "")
	f.Add(append(append(append([]byte{}, req...), rw...), shut...))
	f.Add(append(append([]byte{}, req...), credit...))
	f.Add(append(append([]byte{}, req...), pkt(Header{SrcPort: 5, DstPort: 1, Type: TypeStream, Op: OpRst}, "")...))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := New(3, Options{BufferSize: MaxPacketData, MaxConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		l, err := d.Listen(1)
		if err != nil {
			t.Fatal(err)
		}
		var conns []*Conn
		for len(data) >= HeaderSize {
			h, _ := ParseHeader(data[:HeaderSize])
			data = data[HeaderSize:]
			if h.Flags&(1<<31) == 0 { // mostly well addressed, so the fuzzer gets deep
				h.SrcCID, h.DstCID = 3, HostCID
			}
			n := min(int(h.Len%(MaxPacketData+2)), len(data))
			payload := data[:n]
			data = data[n:]

			d.mu.Lock()
			d.handlePacket(h, n, func(dst []byte, off int) int {
				if off >= len(payload) {
					return 0
				}
				return copy(dst, payload[off:])
			})
			d.drainForTest(t, int(h.FwdCnt%5000))
			d.mu.Unlock()

			select {
			case c := <-l.accept:
				conns = append(conns, c)
			default:
			}
			for _, c := range conns {
				c.SetDeadline(time.Unix(1, 0))
				c.Read(make([]byte, 100))
				c.Write([]byte("reply"))
			}
			if len(conns) > 0 && h.Op == 0 {
				conns[0].Close()
			}
		}
	})
}

// drainForTest sends every pending packet into fake receive buffers and
// checks the device's bounds. d.mu is held.
func (d *Device) drainForTest(t *testing.T, bufLen int) {
	for i := 0; d.hasRXWork(); i++ {
		if i > 100000 {
			d.mu.Unlock() // for the deferred Close
			t.Fatal("device keeps producing packets")
		}
		buf := make([]byte, HeaderSize+bufLen)
		c := &virtq.Chain{Writable: [][]byte{buf[:HeaderSize], buf[HeaderSize:]}}
		n := d.rxPacket(c)
		if n == 0 {
			break // nothing fits a buffer this small; the guest gets it back empty
		}
		h, err := ParseHeader(buf)
		if err != nil || n != HeaderSize+int(h.Len) || (h.SrcCID != HostCID && h.Op != OpRst) || h.DstCID != d.cid {
			t.Fatalf("device sent %d bytes for %v (%v)", n, h, err)
		}
	}
	if len(d.conns) > d.opts.MaxConns {
		t.Fatalf("%d connections, limit %d", len(d.conns), d.opts.MaxConns)
	}
	if d.control.len() > maxControl {
		t.Fatalf("%d control packets queued", d.control.len())
	}
	for _, c := range d.conns {
		if c.rbuf.Len() > d.opts.BufferSize || c.wbuf.Len() > d.opts.BufferSize {
			t.Fatalf("connection buffers %d/%d beyond %d", c.rbuf.Len(), c.wbuf.Len(), d.opts.BufferSize)
		}
	}
}

func TestRing(t *testing.T) {
	r := newRing(8)
	if n := r.Write([]byte("abcdef")); n != 6 {
		t.Fatal(n)
	}
	got := make([]byte, 4)
	if n := r.Read(got); n != 4 || string(got) != "abcd" {
		t.Fatalf("%q", got[:n])
	}
	if n := r.Write([]byte("ghijklmn")); n != 6 || r.Len() != 8 || r.Free() != 0 {
		t.Fatalf("wrap write took %d, len %d", n, r.Len())
	}
	a, b := r.Peek(8)
	if string(a)+string(b) != "efghijkl" {
		t.Fatalf("peek %q %q", a, b)
	}
	r.Discard(3)
	src := []byte("XYZ")
	if n := r.WriteFunc(3, func(dst []byte, off int) int { return copy(dst, src[off:]) }); n != 3 {
		t.Fatal(n)
	}
	all := make([]byte, 16)
	if n := r.Read(all); string(all[:n]) != "hijklXYZ" {
		t.Fatalf("%q", all[:n])
	}
}
