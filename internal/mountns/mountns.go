// Package mountns gives a sandbox a mount namespace of its own, where the
// shim mounts the containers' rootfs and volumes and virtiofsd runs, so
// that none of those mounts is in the host's namespace: the host keeps
// full control of its mount points (an rmdir or umount of a directory the
// shim bound is never EBUSY because of vmpod), and nothing can leak there.
//
// The namespace is a copy of the host's made a recursive slave of it:
// mounts and unmounts on the host still propagate in (volumes that ask
// for rslave or rshared propagation keep receiving them, and so does the
// guest through virtio-fs), while nothing made inside propagates out.
//
// Go and mount namespaces: a namespace is per thread, and setns into a
// mount namespace needs a thread that shares no fs_struct with others.
// The namespace is held by a file descriptor; Do runs a function on a
// fresh locked thread that unshares its fs_struct, enters the namespace
// and is ended afterwards (never unlocked, so never reused by another
// goroutine). Start forks a child from such a thread, kept until the
// child exits, so that the child's parent-death signal fires only with
// this process (see lockedfork).
//
// The namespace lives while the descriptor is open or a process is in
// it: when the shim stops it (Close, after virtiofsd is gone) or dies
// (virtiofsd dies with it), the kernel drops every mount inside, so a
// crashed shim leaves no mount behind anywhere.
package mountns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/lockedfork"
)

// NS is a mount namespace of this process. A nil *NS is the caller's own
// namespace: Do runs the function in place and Start starts the child
// normally (with lockedfork's guarantees).
type NS struct {
	mu sync.Mutex
	f  *os.File // /proc/thread-self/ns/mnt of the thread that made it; nil once closed
}

// New makes a mount namespace, a recursive slave of the caller's.
func New() (*NS, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	onDisposableThread(func() {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			ch <- result{err: fmt.Errorf("mount namespace: unshare: %w", err)}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
			ch <- result{err: fmt.Errorf("mount namespace: make / a recursive slave: %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/mnt")
		if err != nil {
			ch <- result{err: fmt.Errorf("mount namespace: %w", err)}
			return
		}
		ch <- result{f: f}
	})
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	return &NS{f: r.f}, nil
}

// ErrClosed is returned by Do and Start after Close.
var ErrClosed = errors.New("mount namespace closed")

// enter moves the calling (locked, disposable) thread into the namespace.
func (n *NS) enter() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f == nil {
		return ErrClosed
	}
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("mount namespace: unshare fs: %w", err)
	}
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("mount namespace: setns: %w", err)
	}
	return nil
}

// Do runs fn in the namespace (in place for a nil NS) and returns its
// error. fn must not start goroutines that expect to be in the namespace.
// Code in fn that reads the mount table must read
// /proc/thread-self/mountinfo: /proc/self is the main thread's view.
func (n *NS) Do(fn func() error) error {
	if n == nil {
		return fn()
	}
	errc := make(chan error, 1)
	onDisposableThread(func() {
		if err := n.enter(); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	})
	return <-errc
}

// Start starts cmd in the namespace, with SIGKILL as its parent-death
// signal, from a thread kept until cmd exits. The channel yields
// cmd.Wait's result once: the caller must not call cmd.Wait.
func (n *NS) Start(cmd *exec.Cmd) (<-chan error, error) {
	if n == nil {
		return lockedfork.Start(cmd)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	waited := make(chan error, 1)
	// Locked for the child's life (its Pdeathsig follows this thread).
	onDisposableThread(func() {
		if err := n.enter(); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waited <- cmd.Wait()
	})
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return waited, nil
}

// Close releases the namespace; it goes, with every mount in it, once no
// process is left in it. Safe on nil and more than once.
func (n *NS) Close() error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f == nil {
		return nil
	}
	err := n.f.Close()
	n.f = nil
	return err
}

// onDisposableThread runs fn in a new goroutine locked to an OS thread
// that the runtime ends when fn returns, so that no other goroutine ever
// runs in the namespace fn leaves it in. Never the main thread: Go cannot
// end that one and would keep it, in the namespace, as the thread
// /proc/self names.
func onDisposableThread(fn func()) {
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with fn
		if unix.Gettid() != unix.Getpid() {
			fn()
			return
		}
		// On the main thread: hold it, so that the goroutine that runs
		// fn cannot be scheduled there, and give it back after.
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			defer close(done)
			fn()
		}()
		<-done
		runtime.UnlockOSThread()
	}()
}

// MountinfoPath is the mount table of the calling thread's namespace,
// for code that runs under Do.
const MountinfoPath = "/proc/thread-self/mountinfo"
