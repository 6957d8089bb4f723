package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// tapFlags are what QEMU's virtio-net expects of a tap given by fd: frames
// without the packet-information header, preceded by a virtio-net header.
// IFF_TUN_EXCL refuses to attach to an existing device of the same name.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL

// createTap creates a persistent tap called name inside ns, owned by root,
// and returns an open file on it. A tun file belongs to the network
// namespace of the thread that opened /dev/net/tun, so the open happens on a
// thread moved into ns.
func createTap(ns netns.NsHandle, name string) (*os.File, error) {
	var f *os.File
	err := inNamespace(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(tapFlags)
	if err := ioctl(f, unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	// From here on the device exists: undo it on failure. Without PERSIST it
	// vanishes when the last file on it closes.
	if err := ioctlInt(f, unix.TUNSETOWNER, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: TUNSETOWNER: %w", name, err)
	}
	if err := ioctlInt(f, unix.TUNSETPERSIST, 1); err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: TUNSETPERSIST: %w", name, err)
	}
	return f, nil
}

func ioctl(f *os.File, req uint, ifr *unix.Ifreq) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), req, ifr) }); err != nil {
		return err
	}
	return ierr
}

func ioctlInt(f *os.File, req uint, v int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), req, v) }); err != nil {
		return err
	}
	return ierr
}

// inNamespace runs fn on an OS thread that is in ns. The thread goes back
// to its own namespace afterwards; if it cannot, it stays locked and dies
// with its goroutine instead of serving other goroutines from the wrong
// namespace.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
			return // the thread stays locked and exits
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// isVmpodTap reports whether l is a tap vmpod created.
func isVmpodTap(l netlink.Link) bool {
	_, ok := l.(*netlink.Tuntap)
	return ok && strings.HasPrefix(l.Attrs().Name, "tap") && strings.HasSuffix(l.Attrs().Name, tapSuffix)
}

// deleteTap deletes the tap called name if it is still the device with
// index idx (0: any vmpod tap of that name). A missing tap is not an error.
func deleteTap(h *netlink.Handle, name string, idx int) error {
	if name == "" {
		return nil
	}
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if !isVmpodTap(l) || (idx != 0 && l.Attrs().Index != idx) {
		return nil // not ours any more
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}
