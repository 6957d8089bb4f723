package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
)

const (
	// requestTimeout bounds the wait for a request once the host
	// connected, and dialTimeout the guest's dial of its loopback.
	requestTimeout = 10 * time.Second
	dialTimeout    = 10 * time.Second
	// MaxGuestForwards bounds the streams the agent serves at once; the
	// host's own bound (MaxForwards) is lower.
	MaxGuestForwards = 1024
)

// Serve answers the host's port-forward streams on ln until ctx ends or
// ln fails: each gets a connection to the requested loopback port in the
// caller's network namespace (the guest's pod namespace). It closes ln
// and every stream before it returns.
func Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	sem := make(chan struct{}, MaxGuestForwards)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("port-forward: accept: %w", err)
		}
		select {
		case sem <- struct{}{}:
		default:
			log.G(ctx).Warn("port-forward: too many streams; refusing one")
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			serveOne(ctx, c)
		}()
	}
}

// serveOne reads one request from the host, dials the port and splices.
func serveOne(ctx context.Context, c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(requestTimeout))
	var b [RequestSize]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		log.G(ctx).WithError(err).Debug("port-forward: read request")
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	req, err := ParseRequest(b[:])
	if err != nil {
		log.G(ctx).WithError(err).Warn("port-forward: bad request")
		return
	}
	conn, status := dialLoopback(ctx, req)
	_ = c.SetWriteDeadline(time.Now().Add(requestTimeout))
	_, werr := c.Write([]byte{status})
	_ = c.SetWriteDeadline(time.Time{})
	if conn == nil {
		return
	}
	if werr != nil {
		conn.Close()
		return
	}
	splice(c, conn)
}

// dialLoopback connects to the request's port on the loopback of its
// family, then on the other's, as containerd tries tcp4 and then tcp6.
func dialLoopback(ctx context.Context, req Request) (net.Conn, byte) {
	hosts := []string{"127.0.0.1", "::1"}
	if req.Family == FamilyIPv6 {
		hosts[0], hosts[1] = hosts[1], hosts[0]
	}
	d := net.Dialer{Timeout: dialTimeout}
	status := byte(StatusRefused)
	for _, h := range hosts {
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(h, strconv.Itoa(int(req.Port))))
		if err == nil {
			return conn, StatusOK
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENETUNREACH) {
			status = StatusFailed
		}
		log.G(ctx).WithError(err).WithField("port", req.Port).Debug("port-forward: dial in the guest")
	}
	return nil, status
}
