package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/vsock/device"
)

// maxHybridLine bounds a CONNECT or OK line ("CONNECT 4294967295\n" is 19).
const maxHybridLine = 32

// hybridHandshakeTimeout bounds a client's CONNECT line in ServeHybrid.
const hybridHandshakeTimeout = 10 * time.Second

// DialHybrid connects to port in the guest through a hybrid-vsock Unix
// socket (Cloud Hypervisor, Firecracker, Backend.ServeHybrid): it writes
// "CONNECT <port>\n" and reads "OK <hostport>\n". The reply is read byte by
// byte, so that guest data arriving right behind it stays in the
// connection.
func DialHybrid(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("hybrid vsock %s port %d: %w", udsPath, port, err)
	}
	stop := deadlineFromContext(ctx, conn)
	line, err := func() (string, error) {
		if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
			return "", err
		}
		return readLine(conn)
	}()
	stop()
	if err == nil {
		err = parseOK(line)
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("hybrid vsock %s port %d: %w", udsPath, port, err)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// deadlineFromContext makes blocking I/O on conn fail once ctx ends, until
// the returned stop is called. (Not conn.SetDeadline(ctx.Deadline()): that
// could fire before ctx reports why.)
func deadlineFromContext(ctx context.Context, conn net.Conn) (stop func()) {
	s := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return func() { s() }
}

// readLine reads one '\n'-terminated line one byte at a time.
func readLine(r io.Reader) (string, error) {
	var line []byte
	var b [1]byte
	for len(line) < maxHybridLine {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return "", fmt.Errorf("read handshake line: %w", err)
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", fmt.Errorf("handshake line longer than %d bytes", maxHybridLine)
}

func parseOK(line string) error {
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return fmt.Errorf("unexpected handshake reply %q", line)
	}
	if _, err := strconv.ParseUint(rest, 10, 32); err != nil {
		return fmt.Errorf("bad host port in handshake reply %q", line)
	}
	return nil
}

func parseConnect(line string) (uint32, error) {
	rest, ok := strings.CutPrefix(line, "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("unexpected handshake %q", line)
	}
	p, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port in handshake %q", line)
	}
	return uint32(p), nil
}

// ServeHybrid offers the guest's vsock ports on ln with hybrid-vsock
// semantics, for tools that speak it: each client writes "CONNECT <port>\n",
// gets "OK <hostport>\n" once the guest accepted, and then talks to the
// guest. Given ports, it only connects to those and refuses the others.
// It returns when ctx ends or ln fails, after every connection it spliced
// has ended.
func (b *Backend) ServeHybrid(ctx context.Context, ln net.Listener, ports ...uint32) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // ends the splices
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("hybrid vsock: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.serveHybridConn(ctx, c, ports); err != nil {
				log.G(ctx).WithError(err).Debug("hybrid vsock connection")
			}
		}()
	}
}

func (b *Backend) serveHybridConn(ctx context.Context, c net.Conn, ports []uint32) error {
	defer c.Close()
	hctx, cancel := context.WithTimeout(ctx, hybridHandshakeTimeout)
	defer cancel()
	stop := deadlineFromContext(hctx, c)
	line, err := readLine(c)
	var port uint32
	if err == nil {
		port, err = parseConnect(line)
	}
	if err == nil && len(ports) > 0 && !slices.Contains(ports, port) {
		err = fmt.Errorf("port %d is not offered here", port)
	}
	var g net.Conn
	if err == nil {
		g, err = b.Dial(hctx, port)
	}
	if err == nil {
		_, err = fmt.Fprintf(c, "OK %d\n", g.LocalAddr().(device.Addr).Port)
	}
	stop()
	if err != nil {
		if g != nil {
			g.Close()
		}
		return err
	}
	c.SetDeadline(time.Time{})
	defer g.Close()
	splice(ctx, c, g)
	return nil
}

// splice copies both ways until both directions end or ctx ends.
func splice(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	half := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go half(a, b)
	go half(b, a)
	<-done
	<-done
}
