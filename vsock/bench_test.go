package vsock_test

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock/internal/pattern"
)

// BenchmarkThroughput streams through one connection of the Go backend to
// and from a real guest under QEMU.
func BenchmarkThroughput(b *testing.B) {
	vm := startVM(b, q35)
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	pattern.New(9).Read(buf)

	b.Run("HostToGuest", func(b *testing.B) {
		c := vm.dial(b, portDiscard)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Minute))
		b.SetBytes(chunk)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		line := readLine(b, c)
		b.StopTimer()
		if want := fmt.Sprint(b.N * chunk); line != want {
			b.Fatalf("guest received %q, want %q...", line, want)
		}
	})
	b.Run("GuestToHost", func(b *testing.B) {
		c := vm.dial(b, portSource)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Minute))
		b.SetBytes(chunk)
		b.ResetTimer()
		fmt.Fprintf(c, "%d %d\n", b.N*chunk, 9)
		n, err := io.Copy(io.Discard, c)
		b.StopTimer()
		if err != nil || n != int64(b.N*chunk) {
			b.Fatalf("received %d bytes (%v), want %d", n, err, b.N*chunk)
		}
	})
}
