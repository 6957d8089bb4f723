package agent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/stdiostream"
)

const (
	// DefaultMaxStreams bounds the stdio connections the agent holds at
	// once (attached or being set up), so that a confused host cannot
	// exhaust the guest's file descriptors.
	DefaultMaxStreams = 1024
	// headerTimeout bounds the wait for a connection's header, and the
	// send of the status.
	headerTimeout = 10 * time.Second
)

// ServeStdio answers the shim's stdio stream connections on ln (package
// stdiostream) until ctx ends or ln fails: each attaches to one stream of
// a process, or is answered a status saying why not and closed. It closes
// ln before it returns; attached streams live on with their processes.
func (s *Server) ServeStdio(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, s.cfg.MaxStreams)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("stdio streams: accept: %w", err)
		}
		select {
		case sem <- struct{}{}:
		default:
			log.G(ctx).Warnf("stdio streams: %d connections already; refusing one", s.cfg.MaxStreams)
			reply(c, stdiostream.StatusTooMany)
			c.Close()
			continue
		}
		var once sync.Once
		release := func() { once.Do(func() { <-sem }) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveStream(ctx, c, release)
		}()
	}
}

// reply sends the status byte, within headerTimeout.
func reply(c net.Conn, status byte) error {
	_ = c.SetWriteDeadline(time.Now().Add(headerTimeout))
	_, err := c.Write([]byte{status})
	_ = c.SetWriteDeadline(time.Time{})
	return err
}

// serveStream reads c's header and attaches c to the stream it names.
// release is called once c is closed.
func (s *Server) serveStream(ctx context.Context, c net.Conn, release func()) {
	refuse := func(status byte) {
		_ = reply(c, status)
		c.Close()
		release()
	}
	_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := stdiostream.ReadHeader(c)
	if err != nil {
		log.G(ctx).WithError(err).Warn("stdio streams: bad header")
		refuse(stdiostream.StatusBadHeader)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	_, p, err := s.process(h.ContainerID, h.ExecID)
	if err != nil || p == nil {
		log.G(ctx).WithError(err).Debugf("stdio streams: %s of %q/%q", h.Kind, h.ContainerID, h.ExecID)
		refuse(stdiostream.StatusNoProcess)
		return
	}
	a := &attachment{conn: c, release: release}
	switch h.Kind {
	case stdiostream.Stdin:
		in := p.stdin
		if in == nil {
			refuse(stdiostream.StatusNoStream)
			return
		}
		if st := in.reserve(); st != stdiostream.StatusOK {
			refuse(st)
			return
		}
		defer a.close()
		if reply(c, stdiostream.StatusOK) != nil {
			return
		}
		in.receive(ctx, c)
	default:
		out := p.stdout
		if h.Kind == stdiostream.Stderr {
			out = p.stderr
		}
		if out == nil {
			refuse(stdiostream.StatusNoStream)
			return
		}
		if st := out.reserve(); st != stdiostream.StatusOK {
			refuse(st)
			return
		}
		if reply(c, stdiostream.StatusOK) != nil {
			out.deliver(nil)
			a.close()
			return
		}
		// The stream's pump owns c from now on.
		out.deliver(a)
	}
}
