package vsock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"unsafe"

	mdvsock "github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// VhostVsockPath is the kernel's vhost-vsock device.
const VhostVsockPath = "/dev/vhost-vsock"

// vhostVsockSetGuestCID is VHOST_VSOCK_SET_GUEST_CID, _IOW(0xAF, 0x60, __u64).
const vhostVsockSetGuestCID = 0x4008af60

// DialKernel connects to port on the guest with context ID cid through
// the kernel's AF_VSOCK (vhost-vsock on the host).
func DialKernel(ctx context.Context, cid, port uint32) (net.Conn, error) {
	c, err := mdvsock.DialContext(ctx, cid, port, nil)
	if err != nil {
		return nil, fmt.Errorf("vsock dial cid %d port %d: %w", cid, port, err)
	}
	return c, nil
}

// AllocateCID reserves a guest context ID that no other VM on the host
// uses, by claiming it on a /dev/vhost-vsock descriptor. QEMU takes the
// descriptor (vhost-vsock-pci,guest-cid=<cid>,vhostfd=<fd>); the CID stays
// reserved while the descriptor is open. It tries random CIDs in
// [min, max].
func AllocateCID(min, max uint32) (uint32, *os.File, error) {
	if min <= 2 || max < min || max == 0xffffffff {
		return 0, nil, fmt.Errorf("vsock CID range [%d, %d] invalid", min, max)
	}
	f, err := os.OpenFile(VhostVsockPath, os.O_RDWR, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("vsock allocate CID: %w", err)
	}
	span := uint64(max-min) + 1
	start := rand.Uint64N(span)
	for i := uint64(0); i < span && i < 1<<16; i++ {
		cid := uint64(min) + (start+i)%span
		err := ioctlSetCID(f, cid)
		if err == nil {
			return uint32(cid), f, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) {
			f.Close()
			return 0, nil, fmt.Errorf("vsock allocate CID %d: %w", cid, err)
		}
	}
	f.Close()
	return 0, nil, fmt.Errorf("vsock allocate CID: no free CID in [%d, %d]", min, max)
}

func ioctlSetCID(f *os.File, cid uint64) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	err = raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, vhostVsockSetGuestCID, uintptr(unsafe.Pointer(&cid)))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}
