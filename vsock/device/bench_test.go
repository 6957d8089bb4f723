package device_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/vsock/device"
	"github.com/vmpod/vmpod/vsock/virtq"
)

// BenchmarkGuestToHost is the stdout direction without a VM: a simulated
// guest driver keeps the tx queue full of 64 KiB RW packets (header and
// payload in two descriptors, as Linux sends them) for one connection,
// within the credit the host grants, and a host goroutine reads them. One
// op is one packet: allocs/op is the device's cost per packet, which must
// be 0; the simulated guest allocates nothing inside the loop. The host
// reads with Read into its own buffer, or with WriteTo (io.Copy's path),
// which hands the connection's buffer to the writer.
func BenchmarkGuestToHost(b *testing.B) {
	b.Run("Read", func(b *testing.B) { benchGuestToHost(b, false) })
	b.Run("WriteTo", func(b *testing.B) { benchGuestToHost(b, true) })
}

// countWriter counts what it is given and fails once it has enough, which
// ends WriteTo.
type countWriter struct {
	n     *atomic.Int64
	total int64
}

var errEnough = errors.New("enough")

func (w countWriter) Write(p []byte) (int, error) {
	if w.n.Add(int64(len(p))) >= w.total {
		return len(p), errEnough
	}
	return len(p), nil
}

func benchGuestToHost(b *testing.B, writeTo bool) {
	g := newGuest(b, device.Options{})
	l, err := g.dev.Listen(1234)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const bufAlloc = 1 << 20
	c := g.connect(l, 5555, 1234, bufAlloc)

	const pkt = device.MaxPacketData
	// Every tx chain is the same header and the same payload buffer: the
	// device only reads them.
	h := device.Header{SrcCID: cid, DstCID: device.HostCID, SrcPort: 5555, DstPort: 1234,
		Type: device.TypeStream, Op: device.OpRW, Len: pkt, BufAlloc: bufAlloc}
	h.Encode(g.f.Mem.At(g.txHdr, device.HeaderSize))
	chains := queueSize / 2
	for k := range uint16(chains) {
		g.tx.SetDesc(2*k, g.txHdr, device.HeaderSize, virtq.DescFNext, 2*k+1)
		g.tx.SetDesc(2*k+1, g.txData, pkt, 0, 0)
	}
	g.collect() // the RESPONSE's buffer back in the ring
	// The guest side of the used rings, read without allocating.
	mem := g.f.Mem
	usedIdx := func(usedAddr uint64) uint16 { return binary.LittleEndian.Uint16(mem.At(usedAddr+2, 2)) }
	usedHead := func(usedAddr uint64, size, i uint16) uint16 {
		return uint16(binary.LittleEndian.Uint32(mem.At(usedAddr+4+8*uint64(i%size), 4)))
	}
	txSeen, rxSeen := usedIdx(g.tx.Used), usedIdx(g.rx.Used)
	var kick [8]byte
	binary.LittleEndian.PutUint64(kick[:], 1)
	pfds := []unix.PollFd{{Fd: int32(g.f.Calls[device.QueueTX]), Events: unix.POLLIN}, {Fd: int32(g.f.Calls[device.QueueRX]), Events: unix.POLLIN}}
	var drain [8]byte

	var read atomic.Int64
	var failed atomic.Bool
	readerDone := make(chan error, 1)
	total := int64(b.N) * pkt
	b.SetBytes(pkt)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		if writeTo {
			_, err := c.(io.WriterTo).WriteTo(countWriter{&read, total})
			if err != errEnough {
				failed.Store(true)
				readerDone <- fmt.Errorf("WriteTo: %v", err)
				return
			}
			readerDone <- nil
			return
		}
		buf := make([]byte, 256<<10)
		for read.Load() < total {
			n, err := c.Read(buf)
			read.Add(int64(n))
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				failed.Store(true)
				readerDone <- err
				return
			}
		}
		readerDone <- nil
	}()
	var sent int64
	next, inFlight := uint16(0), 0
	deadline := time.Now().Add(5 * time.Minute)
	for sent < total {
		// Give back what the device used: tx chains to reuse, rx buffers
		// (credit updates) to repost.
		for ; txSeen != usedIdx(g.tx.Used); txSeen++ {
			inFlight--
		}
		posted := false
		for ; rxSeen != usedIdx(g.rx.Used); rxSeen++ {
			g.rx.Publish(usedHead(g.rx.Used, g.rx.Size, rxSeen))
			posted = true
		}
		if posted {
			unix.Write(g.f.Kicks[device.QueueRX], kick[:])
		}
		// Publish what the credit and the ring allow, then kick once.
		n := 0
		for inFlight < chains && sent < total && sent+pkt-read.Load() <= device.DefaultBufferSize {
			g.tx.Publish(2 * (next % uint16(chains)))
			next++
			inFlight++
			sent += pkt
			n++
		}
		if n > 0 {
			unix.Write(g.f.Kicks[device.QueueTX], kick[:])
			continue
		}
		if failed.Load() || time.Now().After(deadline) {
			break
		}
		// Wait for a used chain or a credit update, briefly: the reader's
		// progress alone signals nothing.
		pfds[0].Revents, pfds[1].Revents = 0, 0
		if k, _ := unix.Poll(pfds, 1); k > 0 {
			for _, p := range pfds {
				if p.Revents != 0 {
					unix.Read(int(p.Fd), drain[:])
				}
			}
		}
	}
	select {
	case err := <-readerDone:
		if err != nil {
			b.Fatalf("host read %d of %d bytes: %v", read.Load(), total, err)
		}
	case <-time.After(time.Until(deadline) + time.Second):
		b.Fatalf("stalled: %d of %d bytes sent, %d read", sent, total, read.Load())
	}
	b.StopTimer()
}

// BenchmarkHostToGuest is the stdin direction: a host goroutine writes
// 64 KiB at a time into one connection, and the simulated guest takes the
// packets from its receive buffers (4 KiB each, as Linux posts them),
// reposts the buffers and returns credit with CREDIT_UPDATE packets. One
// op is 64 KiB written; allocs/op must be 0.
func BenchmarkHostToGuest(b *testing.B) {
	g := newGuest(b, device.Options{})
	l, err := g.dev.Listen(1234)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const bufAlloc = 1 << 20
	c := g.connect(l, 5555, 1234, bufAlloc)
	g.collect()
	for g.tx.TakeUsed() != nil {
	}
	mem := g.f.Mem
	usedIdx := func(usedAddr uint64) uint16 { return binary.LittleEndian.Uint16(mem.At(usedAddr+2, 2)) }
	usedElem := func(usedAddr uint64, size, i uint16) (uint16, uint32) {
		e := mem.At(usedAddr+4+8*uint64(i%size), 8)
		return uint16(binary.LittleEndian.Uint32(e)), binary.LittleEndian.Uint32(e[4:])
	}
	// One tx chain, reused for every credit update once the device used it.
	g.tx.SetDesc(0, g.txHdr, device.HeaderSize, 0, 0)
	txSeen, rxSeen := usedIdx(g.tx.Used), usedIdx(g.rx.Used)
	txBusy := false
	var kick [8]byte
	binary.LittleEndian.PutUint64(kick[:], 1)
	pfds := []unix.PollFd{{Fd: int32(g.f.Calls[device.QueueRX]), Events: unix.POLLIN}}
	var drain [8]byte

	const chunk = 64 << 10
	total := int64(b.N) * chunk
	writerDone := make(chan error, 1)
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		buf := make([]byte, chunk)
		c.SetWriteDeadline(time.Now().Add(5 * time.Minute))
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	var got, told int64
	deadline := time.Now().Add(5 * time.Minute)
	for got < total && time.Now().Before(deadline) {
		posted := false
		for ; rxSeen != usedIdx(g.rx.Used); rxSeen++ {
			head, n := usedElem(g.rx.Used, g.rx.Size, rxSeen)
			hdr := g.rxBufs[head][0]
			if n >= device.HeaderSize {
				h, _ := device.ParseHeader(mem.At(hdr, device.HeaderSize))
				if h.Op == device.OpRW {
					got += int64(h.Len)
				}
			}
			g.rx.Publish(head)
			posted = true
		}
		if posted {
			unix.Write(g.f.Kicks[device.QueueRX], kick[:])
		}
		if txBusy && txSeen != usedIdx(g.tx.Used) {
			txSeen++
			txBusy = false
		}
		// Credit back once a quarter of the buffer was consumed.
		if !txBusy && got-told >= bufAlloc/4 {
			h := device.Header{SrcCID: cid, DstCID: device.HostCID, SrcPort: 5555, DstPort: 1234,
				Type: device.TypeStream, Op: device.OpCreditUpdate, BufAlloc: bufAlloc, FwdCnt: uint32(got)}
			h.Encode(mem.At(g.txHdr, device.HeaderSize))
			g.tx.Publish(0)
			unix.Write(g.f.Kicks[device.QueueTX], kick[:])
			told, txBusy = got, true
		}
		if !posted {
			pfds[0].Revents = 0
			if k, _ := unix.Poll(pfds, 1); k > 0 {
				unix.Read(int(pfds[0].Fd), drain[:])
			}
		}
	}
	if err := <-writerDone; err != nil || got != total {
		b.Fatalf("guest got %d of %d bytes (writer: %v)", got, total, err)
	}
	b.StopTimer()
}
