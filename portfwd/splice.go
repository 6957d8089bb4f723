package portfwd

import (
	"errors"
	"io"
	"net"
	"sync"
)

// halfCloser is a connection whose write side can be closed alone
// (*net.TCPConn, vsock connections).
type halfCloser interface {
	CloseWrite() error
}

// splice copies a to b and b to a until both directions ended, closing
// each write side as its source ends (half-close), then closes both. A
// direction that fails (a reset) closes both at once, resetting a TCP
// peer rather than ending its stream cleanly, so that the failure reaches
// the client as one.
func splice(a, b net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			reset(a)
			reset(b)
		})
	}
	var wg sync.WaitGroup
	copyHalf := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			abort()
			return
		}
		if hc, ok := dst.(halfCloser); ok {
			if hc.CloseWrite() == nil {
				return
			}
		}
		abort()
	}
	wg.Add(2)
	go copyHalf(a, b)
	go copyHalf(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// reset closes c, with a TCP reset when it is TCP (or wraps TCP).
func reset(c net.Conn) {
	if t, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = t.SetLinger(0)
	}
	c.Close()
}
