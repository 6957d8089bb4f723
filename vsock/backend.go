// Package vsock connects the host to a guest's vsock in the three ways
// vmpod supports:
//
//   - Backend: vmpod's own vhost-user-vsock device, for hosts without
//     /dev/vhost-vsock. QEMU's vhost-user-vsock-pci connects to its Unix
//     socket; Dial and Listen reach the guest in this process.
//   - DialKernel: AF_VSOCK through the kernel's vhost-vsock.
//   - DialHybrid: the hybrid-vsock Unix socket of Cloud Hypervisor and
//     Firecracker (and of Backend.ServeHybrid).
package vsock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/vsock/device"
	"github.com/vmpod/vmpod/vsock/vhostuser"
)

// Option tunes a Backend.
type Option func(*device.Options)

// WithBufferSize sets each connection's buffer, per direction.
func WithBufferSize(n int) Option { return func(o *device.Options) { o.BufferSize = n } }

// WithMaxConns bounds the connections open at once.
func WithMaxConns(n int) Option { return func(o *device.Options) { o.MaxConns = n } }

// WithLogger sends the device's diagnostics (at debug and warning level:
// what a misbehaving guest did) to l.
func WithLogger(l *log.Entry) Option { return func(o *device.Options) { o.Log = l } }

// Backend is one VM's vhost-user-vsock device. QEMU needs the VM's memory
// shared through a memfd and the device on the backend's socket:
//
//	-object memory-backend-memfd,id=mem,size=<size>,share=on
//	-machine <type>,memory-backend=mem
//	-chardev socket,id=vsock,path=<socketPath>
//	-device vhost-user-vsock-pci,chardev=vsock
type Backend struct {
	path string
	dev  *device.Device

	mu      sync.Mutex
	ln      *net.UnixListener  // nil once QEMU connected or Close ran
	cancel  context.CancelFunc // ends Serve
	closed  bool
	serving chan struct{} // closed when Serve returns; nil if not serving
}

// NewBackend creates the device for a guest with context ID guestCID and
// its socket at socketPath (mode 0600). A stale socket there is replaced.
func NewBackend(socketPath string, guestCID uint64, opts ...Option) (*Backend, error) {
	var o device.Options
	for _, f := range opts {
		f(&o)
	}
	if fi, err := os.Lstat(socketPath); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(socketPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vsock backend: listen on %s: %w", socketPath, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(socketPath, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("vsock backend: chmod %s: %w", socketPath, err)
	}
	dev, err := device.New(guestCID, o)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("vsock backend %s: %w", socketPath, err)
	}
	return &Backend{path: socketPath, dev: dev, ln: ln}, nil
}

// SocketPath is the socket QEMU connects to.
func (b *Backend) SocketPath() string { return b.path }

// CID is the guest's context ID.
func (b *Backend) CID() uint64 { return b.dev.CID() }

// Serve accepts QEMU's connection and runs the device until ctx is done or
// QEMU disconnects. It returns an error for a protocol violation; that
// ends this VM's vsock only. It may be called once.
func (b *Backend) Serve(ctx context.Context) error {
	b.mu.Lock()
	ln := b.ln
	if b.closed || ln == nil || b.serving != nil {
		b.mu.Unlock()
		return fmt.Errorf("vsock backend %s: closed or already serving", b.path)
	}
	b.serving = make(chan struct{})
	defer close(b.serving)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	b.cancel = cancel
	b.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { ln.SetDeadline(time.Unix(1, 0)) })
	conn, err := ln.AcceptUnix()
	stop()
	b.mu.Lock()
	// One frontend per backend: stop listening, which removes the socket.
	ln.Close()
	b.ln = nil
	if err == nil && b.closed {
		conn.Close()
		err = net.ErrClosed
	}
	closed := b.closed
	b.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil || closed {
			return nil
		}
		return fmt.Errorf("vsock backend %s: accept: %w", b.path, err)
	}
	defer conn.Close()
	err = vhostuser.Serve(ctx, conn, b.dev)
	// The guest's side of every connection is gone with the frontend.
	b.dev.Close()
	if err != nil {
		return fmt.Errorf("vsock backend %s: %w", b.path, err)
	}
	return nil
}

// Dial connects to port on the guest.
func (b *Backend) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := b.dev.Dial(ctx, port)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Listen accepts the guest's connections to host port port.
func (b *Backend) Listen(port uint32) (net.Listener, error) {
	l, err := b.dev.Listen(port)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Stats reports the device's connections and buffers.
func (b *Backend) Stats() device.Stats { return b.dev.Stats() }

// Counters returns the device's traffic counters (for metrics).
func (b *Backend) Counters() device.Counters { return b.dev.Counters() }

// Close removes the socket, resets every connection, waits for Serve to
// return (which unmaps guest memory) and stops the device.
func (b *Backend) Close() error {
	b.mu.Lock()
	b.closed = true
	var errs []error
	if b.ln != nil {
		errs = append(errs, b.ln.Close())
		b.ln = nil
	}
	if b.cancel != nil {
		b.cancel()
	}
	serving := b.serving
	b.mu.Unlock()
	errs = append(errs, b.dev.Close())
	if serving != nil {
		<-serving
	}
	return errors.Join(errs...)
}
