package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func TestOutputBufferReadWrite(t *testing.T) {
	b := newOutputBuffer(16)
	ctx := context.Background()
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	data, eof, err := b.Read(ctx, 3)
	if err != nil || string(data) != "hel" || eof {
		t.Fatalf("read 3: %q %v %v", data, eof, err)
	}
	b.CloseWrite()
	// The last data and EOF may arrive together.
	data, eof, err = b.Read(ctx, 100)
	if err != nil || string(data) != "lo" || !eof {
		t.Fatalf("read rest: %q %v %v", data, eof, err)
	}
	data, eof, err = b.Read(ctx, 100)
	if err != nil || len(data) != 0 || !eof {
		t.Fatalf("read after EOF: %q %v %v", data, eof, err)
	}
}

func TestOutputBufferReadBlocksUntilData(t *testing.T) {
	b := newOutputBuffer(16)
	got := make(chan []byte)
	go func() {
		data, _, _ := b.Read(context.Background(), 10)
		got <- data
	}()
	select {
	case d := <-got:
		t.Fatalf("read returned %q before any write", d)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := b.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if string(d) != "x" {
			t.Fatalf("read %q", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not wake up after a write")
	}
}

func TestOutputBufferReadHonoursContext(t *testing.T) {
	b := newOutputBuffer(16)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, eof, err := b.Read(ctx, 10)
	if !errors.Is(err, context.DeadlineExceeded) || eof {
		t.Fatalf("read on an idle stream: eof %v, err %v", eof, err)
	}
}

// A writer blocks while the buffer is full and resumes when a reader makes
// room: that is what stops reading the pipe and slows the process down.
func TestOutputBufferBackPressure(t *testing.T) {
	b := newOutputBuffer(8)
	done := make(chan error, 1)
	go func() {
		_, err := b.Write([]byte("0123456789abcdef")) // twice the limit
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("write of twice the limit returned (%v) without a reader", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.mu.Lock()
	held := b.data.Len()
	b.mu.Unlock()
	if held != 8 {
		t.Fatalf("buffer holds %d bytes, limit 8", held)
	}
	var got []byte
	for len(got) < 16 {
		data, _, err := b.Read(context.Background(), 5)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, data...)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if string(got) != "0123456789abcdef" {
		t.Fatalf("read %q", got)
	}
}

func TestOutputBufferCloseUnblocksWriter(t *testing.T) {
	b := newOutputBuffer(4)
	done := make(chan error, 1)
	go func() {
		_, err := b.Write([]byte("0123456789"))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, errBufferClosed) {
			t.Fatalf("write after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close did not unblock the writer")
	}
	if _, eof, _ := b.Read(context.Background(), 10); !eof {
		t.Fatal("a closed buffer must read as EOF")
	}
}

// pump copies a pipe into a buffer without losing a byte, through a buffer
// much smaller than the data.
func TestPumpNoLoss(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\n"), 100000) // 3.7 MB
	go func() {
		_, _ = w.Write(want)
		w.Close()
	}()
	b := newOutputBuffer(64 << 10)
	done := make(chan struct{})
	go pump(r, b, done)
	var got []byte
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		data, eof, err := b.Read(ctx, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, data...)
		if eof {
			break
		}
	}
	<-done
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

func TestStdinWriter(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := &stdinWriter{w: w, owned: true}
	ctx := context.Background()
	if n, err := s.Write(ctx, []byte("abc")); err != nil || n != 3 {
		t.Fatalf("write: %d %v", n, err)
	}
	if _, err := s.Write(ctx, make([]byte, MaxStdinWrite+1)); err == nil {
		t.Fatal("oversize write accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, []byte("x")); err == nil {
		t.Fatal("write after close accepted")
	}
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "abc" {
		t.Fatalf("read %q %v", got, err)
	}
}

// A write to a process that does not read gives up when ctx ends.
func TestStdinWriterHonoursContext(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := &stdinWriter{w: w, owned: true}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	n, err := s.Write(ctx, make([]byte, MaxStdinWrite)) // more than a pipe holds
	if !errors.Is(err, context.DeadlineExceeded) || n >= MaxStdinWrite {
		t.Fatalf("write to a full pipe: %d, %v", n, err)
	}
	// The deadline is cleared for the next write.
	go func() { _, _ = io.Copy(io.Discard, r) }()
	if _, err := s.Write(context.Background(), []byte("more")); err != nil {
		t.Fatalf("write after a timed-out write: %v", err)
	}
}

func TestOutputBufferReleasesMemory(t *testing.T) {
	b := newOutputBuffer(1 << 20)
	if _, err := b.Write(make([]byte, 512<<10)); err != nil {
		t.Fatal(err)
	}
	b.CloseWrite()
	if b.drained() {
		t.Fatal("drained before the data was read")
	}
	for {
		_, eof, err := b.Read(context.Background(), 100<<10)
		if err != nil {
			t.Fatal(err)
		}
		if eof {
			break
		}
	}
	if !b.drained() || b.data.Cap() != 0 {
		t.Fatalf("drained %v, capacity %d after reading to EOF", b.drained(), b.data.Cap())
	}
}

// BenchmarkPump measures a pipe → outputBuffer → reader transfer in the
// agent process.
func BenchmarkPump(b *testing.B) {
	const size = 64 << 20
	chunk := make([]byte, 64<<10)
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for n := 0; n < size; n += len(chunk) {
				_, _ = w.Write(chunk)
			}
			w.Close()
		}()
		buf := newOutputBuffer(DefaultOutputLimit)
		done := make(chan struct{})
		go pump(r, buf, done)
		total := 0
		for {
			data, eof, err := buf.Read(context.Background(), 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			total += len(data)
			if eof {
				break
			}
		}
		<-done
		if total != size {
			b.Fatalf("read %d", total)
		}
	}
}
