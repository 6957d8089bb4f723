// Command guestecho is the /init of the vsock end-to-end tests' guest. It
// loads the vsock modules and serves a few ports:
//
//	5000 echo: copies everything back
//	5001 sink: reads to EOF, answers "<bytes> <sha256>\n"
//	5002 source: reads "<bytes> <seed>\n", writes that much pattern data
//	5004 discard: reads to EOF, answers "<bytes>\n" (no checksum, for
//	     benchmarks: hashing under TCG is slower than the transport)
//	5003 dialer: reads "<port> <bytes> <seed>\n", connects to the host's
//	     port, answers "OK\n" and sends the pattern there, or answers
//	     "ERR <errno name>\n"
//	5005 zeros: reads "<bytes>\n", writes that many zero bytes in large
//	     writes (the bench's stream floor: like `head -c N /dev/zero`,
//	     with nothing to compute in the guest)
package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/mdlayher/vsock"

	"github.com/vmpod/vmpod/kmod"
	"github.com/vmpod/vmpod/vsock/internal/pattern"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "guestecho: %v\n", err)
	}
	select {} // PID 1 must not exit
}

func run() error {
	syscall.Mount("proc", "/proc", "proc", 0, "")
	syscall.Mount("sysfs", "/sys", "sysfs", 0, "")
	syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	dir, err := kmod.ModulesDir()
	if err != nil {
		return err
	}
	if err := kmod.LoadListed(kmod.ListPath, dir); err != nil {
		return fmt.Errorf("load modules: %w", err)
	}
	services := map[uint32]func(net.Conn){5000: echo, 5001: sink, 5002: source, 5003: dialer, 5004: discard, 5005: zeros}
	for port, h := range services {
		l, err := vsock.Listen(port, nil)
		if err != nil {
			return fmt.Errorf("listen on %d: %w", port, err)
		}
		go serve(l, h)
	}
	fmt.Println("guestecho: ready")
	return nil
}

func serve(l net.Listener, h func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "guestecho: accept: %v\n", err)
			return
		}
		go func() {
			defer c.Close()
			h(c)
		}()
	}
}

func echo(c net.Conn) { io.Copy(c, c) }

func sink(c net.Conn) {
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		fmt.Fprintf(c, "ERR %v\n", err)
		return
	}
	fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
}

func discard(c net.Conn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		fmt.Fprintf(c, "ERR %v\n", err)
		return
	}
	fmt.Fprintf(c, "%d\n", n)
}

func source(c net.Conn) {
	var n int64
	var seed uint64
	if _, err := fmt.Fscanf(bufio.NewReader(io.LimitReader(c, 64)), "%d %d\n", &n, &seed); err != nil {
		fmt.Fprintf(c, "ERR %v\n", err)
		return
	}
	io.CopyN(c, pattern.New(seed), n)
}

// zeroWrite is the size of one write of the zeros service: large, so that
// the guest spends its time in the transport, not in system calls.
const zeroWrite = 256 << 10

func zeros(c net.Conn) {
	var n int64
	if _, err := fmt.Fscanf(bufio.NewReader(io.LimitReader(c, 32)), "%d\n", &n); err != nil || n < 0 {
		fmt.Fprintf(c, "ERR bad request: %v\n", err)
		return
	}
	buf := make([]byte, zeroWrite)
	for n > 0 {
		k := int64(len(buf))
		if n < k {
			k = n
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
		n -= k
	}
}

func dialer(c net.Conn) {
	var port uint32
	var n int64
	var seed uint64
	if _, err := fmt.Fscanf(bufio.NewReader(io.LimitReader(c, 64)), "%d %d %d\n", &port, &n, &seed); err != nil {
		fmt.Fprintf(c, "ERR %v\n", err)
		return
	}
	h, err := vsock.Dial(vsock.Host, port, nil)
	if err != nil {
		fmt.Fprintf(c, "ERR %s\n", errnoName(err))
		return
	}
	defer h.Close()
	fmt.Fprintf(c, "OK\n")
	io.CopyN(h, pattern.New(seed), n)
}

func errnoName(err error) string {
	for _, e := range []syscall.Errno{syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ETIMEDOUT} {
		if errors.Is(err, e) {
			return map[syscall.Errno]string{syscall.ECONNRESET: "ECONNRESET", syscall.ECONNREFUSED: "ECONNREFUSED", syscall.ETIMEDOUT: "ETIMEDOUT"}[e]
		}
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
