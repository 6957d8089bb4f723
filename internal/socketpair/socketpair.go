// Package socketpair gives tests both ends of a connected Unix stream
// socket: a syscall.Conn with CloseWrite, as a vsock connection is, with
// no VM.
package socketpair

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// Unix returns two connected ends, closed when the test ends.
func Unix(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
