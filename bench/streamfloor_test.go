package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/qemu"
	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
	"github.com/vmpod/vmpod/vsock"
)

// The stream floor's guest is vsock/internal/guestecho; its zeros service
// writes the zero bytes a request asks for, and its echo port answers once
// the guest is up.
const (
	floorPortEcho  = 5000
	floorPortZeros = 5005
	floorGuestCID  = 3
)

// streamFloor is the best this machine's VM does at moving a stream to the
// host: a guest process writing zeros into an AF_VSOCK connection that a
// host goroutine reads straight from vsock.Backend, the backend the shim
// serves QEMU over vhost-user, in this process. Same kernel, machine type,
// accel, vCPUs and memory as the pods; no agent, no RPC, no ctr.
type streamFloor struct {
	backend *vsock.Backend
	vm      *qemu.QEMU
	cancel  context.CancelFunc
	served  chan error
}

// startStreamFloor boots the floor guest and returns once it answers; it
// stops when b ends.
func startStreamFloor(b *testing.B, kernel string) *streamFloor {
	b.Helper()
	cfg := vmConfig(b, kernel, streamFloorInitrd(b, kernel))
	cfg.ID = "bench-stream-floor"
	leakcheck.Check(b, leakcheck.Options{Roots: []string{cfg.StateDir}})
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		b.Fatal(err)
	}
	backend, err := vsock.NewBackend(filepath.Join(cfg.StateDir, "vsock.sock"), floorGuestCID)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Vsock = &hypervisor.Vsock{VhostUserSocket: backend.SocketPath()}
	f := &streamFloor{backend: backend, served: make(chan error, 1)}
	var ctx context.Context
	ctx, f.cancel = context.WithCancel(context.Background())
	go func() { f.served <- backend.Serve(ctx) }()
	b.Cleanup(func() { f.stop(b) })
	if f.vm, err = qemu.New(cfg); err != nil {
		b.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), bootTimeout)
	defer bcancel()
	if err := f.vm.Start(bctx); err != nil {
		b.Fatalf("stream floor: %v", err)
	}
	for {
		dctx, dcancel := context.WithTimeout(bctx, 2*time.Second)
		c, err := backend.Dial(dctx, floorPortEcho)
		dcancel()
		if err == nil {
			c.Close()
			return f
		}
		select {
		case <-bctx.Done():
			b.Fatalf("stream floor guest did not answer within %s: %v: %s", bootTimeout, err, f.vm.ConsoleTail())
		case <-f.vm.Done():
			b.Fatalf("stream floor guest exited: %v: %s", f.vm.Err(), f.vm.ConsoleTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop ends QEMU and the backend.
func (f *streamFloor) stop(b *testing.B) {
	if f.vm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := f.vm.Stop(ctx); err != nil {
			b.Errorf("stream floor: stop QEMU: %v", err)
		}
	}
	f.cancel()
	if err := f.backend.Close(); err != nil {
		b.Errorf("stream floor: close backend: %v", err)
	}
	select {
	case err := <-f.served:
		if err != nil {
			b.Errorf("stream floor: backend: %v", err)
		}
	case <-time.After(10 * time.Second):
		b.Error("stream floor: backend Serve did not return")
	}
}

// floorRun is one stream through the floor.
type floorRun struct {
	rate       float64 // MiB/s, first byte to last
	backendCPU float64 // seconds of this process's CPU (the backend and the reader)
	qemuCPU    float64 // seconds of QEMU's CPU
}

// stream asks the guest for size zero bytes and reads them. The rate runs
// from the first byte to the last, as for the streams through ctr.
func (f *streamFloor) stream(size int64) (floorRun, error) {
	ctx, cancel := context.WithTimeout(context.Background(), floorStreamTimeout(size))
	defer cancel()
	c, err := f.backend.Dial(ctx, floorPortZeros)
	if err != nil {
		return floorRun{}, fmt.Errorf("stream floor: dial the guest's zeros port: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	qemuBefore, err := cpuSeconds("/proc", f.vm.Pid())
	if err != nil {
		return floorRun{}, fmt.Errorf("stream floor: %w", err)
	}
	selfBefore := selfCPU()
	if _, err := fmt.Fprintf(c, "%d\n", size); err != nil {
		return floorRun{}, fmt.Errorf("stream floor: request: %w", err)
	}
	var out counter
	n, err := io.CopyBuffer(&out, c, make([]byte, 256<<10))
	if err != nil {
		return floorRun{}, fmt.Errorf("stream floor: read after %d bytes: %w", n, err)
	}
	if n != size {
		return floorRun{}, fmt.Errorf("stream floor: the guest sent %d bytes, want %d", n, size)
	}
	r := floorRun{backendCPU: selfCPU() - selfBefore}
	qemuAfter, err := cpuSeconds("/proc", f.vm.Pid())
	if err != nil {
		return floorRun{}, fmt.Errorf("stream floor: %w", err)
	}
	r.qemuCPU = qemuAfter - qemuBefore
	d := out.last.Sub(out.first).Seconds()
	if d <= 0 {
		return floorRun{}, errors.New("stream floor: no measurable duration")
	}
	r.rate = float64(size) / (1 << 20) / d
	return r, nil
}

// selfCPU is this process's user and system time in seconds: while the
// floor streams, that is the backend's goroutines and the reader.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// floorStreamTimeout bounds one stream of size bytes: generous, a stalled
// stream still fails.
func floorStreamTimeout(size int64) time.Duration {
	return 2*time.Minute + time.Duration(size>>20)*time.Second
}

// streamFloorInitrd is an initrd whose /init is guestecho, with the boot
// modules (vsock's among them) when kernel loads modules.
func streamFloorInitrd(b *testing.B, kernel string) string {
	b.Helper()
	rep, err := kernelcheck.Check(kernel)
	if err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), "stream-floor.img")
	if _, err := image.BuildInitrd(image.Options{
		Init:      testbin.Build(b, "./vsock/internal/guestecho", true),
		NoModules: rep.ConfigFrom != "" && !rep.Modules,
		Output:    out,
	}); err != nil {
		b.Fatal(err)
	}
	return out
}
