package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/containerd/log"
)

// MaxForwards is how many port-forward connections one pod carries at
// once; more are reset. kubectl opens one per client connection to the
// forwarded port, so this is a bound on concurrent clients.
const MaxForwards = 64

// Dialer opens a new stream to the agent's port-forward port.
type Dialer func(ctx context.Context) (net.Conn, error)

// Forwarder carries the connections its listeners accept (package
// capture's, in the pod's network namespace) to the guest.
type Forwarder struct {
	lns    []net.Listener
	dial   Dialer
	max    int
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}
}

// NewForwarder starts accepting on lns, at most max connections at once
// (MaxForwards when 0). Close stops it.
func NewForwarder(ctx context.Context, lns []net.Listener, dial Dialer, max int) *Forwarder {
	if max <= 0 {
		max = MaxForwards
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &Forwarder{lns: lns, dial: dial, max: max, ctx: ctx, cancel: cancel, sem: make(chan struct{}, max)}
	for _, ln := range lns {
		f.wg.Add(1)
		go f.accept(ln)
	}
	return f
}

// Close stops accepting, ends every forwarded connection and waits for
// all of them.
func (f *Forwarder) Close() error {
	f.cancel()
	var errs []error
	for _, ln := range f.lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	f.wg.Wait()
	return errors.Join(errs...)
}

func (f *Forwarder) accept(ln net.Listener) {
	defer f.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.ctx.Err() == nil {
				log.G(f.ctx).WithError(err).Warn("port-forward: accept failed; no more forwards in this pod")
			}
			return
		}
		select {
		case f.sem <- struct{}{}:
		default:
			log.G(f.ctx).WithField("max", f.max).Warn("port-forward: too many connections at once; resetting one")
			reset(c)
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() { <-f.sem }()
			f.forward(c)
		}()
	}
}

// forward carries c to the port it was addressed to, in the guest.
func (f *Forwarder) forward(c net.Conn) {
	stopClient := context.AfterFunc(f.ctx, func() { reset(c) })
	defer stopClient()
	req, err := requestFor(c.LocalAddr())
	if err != nil {
		log.G(f.ctx).WithError(err).Warn("port-forward")
		reset(c)
		return
	}
	g, err := f.open(req)
	if err != nil {
		log.G(f.ctx).WithError(err).WithField("port", req.Port).Debug("port-forward: resetting the client")
		reset(c)
		return
	}
	stopGuest := context.AfterFunc(f.ctx, func() { g.Close() })
	defer stopGuest()
	splice(c, g)
}

// open dials the agent and asks for the port; the stream is ready for
// bytes when err is nil.
func (f *Forwarder) open(req Request) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(f.ctx, dialTimeout)
	defer cancel()
	g, err := f.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("port-forward to port %d: dial the agent: %w", req.Port, err)
	}
	// Close does not wait for the guest's answer.
	stop := context.AfterFunc(f.ctx, func() { g.Close() })
	defer stop()
	// Bounded: the guest answers after its own dial, itself bounded.
	_ = g.SetDeadline(time.Now().Add(requestTimeout + dialTimeout))
	b := req.Encode()
	var status [1]byte
	if _, err = g.Write(b[:]); err == nil {
		_, err = io.ReadFull(g, status[:])
	}
	if err == nil {
		err = ParseStatus(status[0])
	}
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("port-forward to port %d: %w", req.Port, err)
	}
	_ = g.SetDeadline(time.Time{})
	return g, nil
}

// requestFor is the request for a captured connection: its local address
// is the one the client dialled.
func requestFor(a net.Addr) (Request, error) {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.Port <= 0 || ta.Port > 0xffff {
		return Request{}, fmt.Errorf("captured connection to %v: not a TCP port", a)
	}
	fam := FamilyIPv6
	if ta.IP.To4() != nil {
		fam = FamilyIPv4
	}
	return Request{Family: fam, Port: uint16(ta.Port)}, nil
}
