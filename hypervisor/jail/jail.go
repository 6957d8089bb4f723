// Package jail hands out the unprivileged host identities that QEMU drops
// to: one uid (and the gid of the same number) per running VM, from a
// configured range, host-wide.
//
// A distinct uid per VM matters because two processes of one uid may
// signal and ptrace each other: with a shared uid, one tenant's
// compromised QEMU could kill or inspect another's.
//
// The allocation is a lock file per uid, <LockDir>/<uid>.lock, held with
// flock(LOCK_EX) by the process that owns the VM. The kernel drops the lock
// when that process dies, however it dies, so a crashed shim frees its uid
// without any clean-up; a lock file left behind is simply reused. A uid is
// also skipped while any process still runs with it (a QEMU whose shim died
// outright no longer holds the lock, and the kernel cleared its
// parent-death signal when it changed uid).
package jail

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Defaults: a block well above the system's users (below 60000), the
// subordinate ranges useradd hands out (from 100000, 65536 each) and the
// overflow ids, and below (uid_t)-1.
const (
	DefaultLockDir        = "/run/vmpod/jail"
	DefaultUIDStart       = 1879048192 // 0x70000000
	DefaultUIDCount       = 65536
	maxUIDEnd       int64 = math.MaxUint32 // (uid_t)-1 is "no change" to setresuid
	maxLockAttempts       = 8
)

// Range is the block of host uids [Start, Start+Count) that VMs get, one
// each, with their lock files in LockDir.
type Range struct {
	// LockDir holds one lock file per uid in use; it must be the same for
	// every vmpod on the host (default DefaultLockDir).
	LockDir string
	Start   uint32
	Count   uint32
}

// Validate checks that the range is non-empty, excludes root and fits below
// (uid_t)-1.
func (r Range) Validate() error {
	switch {
	case r.Start == 0:
		return fmt.Errorf("jail uid range: start 0 is root")
	case r.Count == 0:
		return fmt.Errorf("jail uid range: count 0 leaves no uid")
	case int64(r.Start)+int64(r.Count) > maxUIDEnd:
		return fmt.Errorf("jail uid range [%d, %d) includes %d, which is not a uid", r.Start, int64(r.Start)+int64(r.Count), uint32(math.MaxUint32))
	case r.LockDir != "" && !filepath.IsAbs(r.LockDir):
		return fmt.Errorf("jail lock directory %q is not absolute", r.LockDir)
	}
	return nil
}

func (r Range) lockDir() string {
	if r.LockDir == "" {
		return DefaultLockDir
	}
	return r.LockDir
}

// ID is one allocated identity. Its uid stays reserved until Release or
// until this process exits.
type ID struct {
	UID, GID uint32
	path     string
	f        *os.File
}

// inUse reports whether a process runs with uid (a variable for tests).
var inUse = uidInUse

// Allocate reserves the lowest free uid of r. It fails when every uid of
// the range is taken, naming the range, or when ctx ends.
func (r Range) Allocate(ctx context.Context) (*ID, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	dir := r.lockDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("jail lock directory %s: %w", dir, err)
	}
	for i := uint32(0); i < r.Count; i++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("jail: allocating a uid in [%d, %d): %w", r.Start, int64(r.Start)+int64(r.Count), err)
		}
		uid := r.Start + i
		id, err := tryLock(filepath.Join(dir, strconv.FormatUint(uint64(uid), 10)+".lock"), uid)
		if err != nil {
			return nil, err
		}
		if id == nil {
			continue
		}
		busy, err := inUse(uid)
		if err == nil && !busy {
			return id, nil
		}
		// Leave the file: whoever runs with the uid keeps it out of use
		// through the scan, not through the lock.
		id.f.Close()
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("jail: no free uid in [%d, %d) (lock directory %s): every one is in use", r.Start, int64(r.Start)+int64(r.Count), dir)
}

// tryLock takes path's lock without waiting; nil, nil means another
// process holds it.
func tryLock(path string, uid uint32) (*ID, error) {
	// Each retry means another process released this uid meanwhile; a
	// few in a row mean it is being taken and released in a loop.
	for attempt := 0; attempt < maxLockAttempts; attempt++ {
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, fmt.Errorf("jail: lock file %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("jail: locking %s: %w", path, err)
		}
		// A holder releasing between our open and our flock unlinked the
		// file we locked: that lock guards nothing, so try the path again.
		same, err := samePath(f, path)
		if err != nil {
			f.Close()
			return nil, err
		}
		if same {
			return &ID{UID: uid, GID: uid, path: path, f: f}, nil
		}
		f.Close()
	}
	return nil, nil
}

func samePath(f *os.File, path string) (bool, error) {
	var fst, pst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return false, fmt.Errorf("jail: stat %s: %w", path, err)
	}
	if err := unix.Lstat(path, &pst); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("jail: stat %s: %w", path, err)
	}
	return fst.Dev == pst.Dev && fst.Ino == pst.Ino, nil
}

// Release frees the uid: it removes the lock file, then unlocks it, so that
// a waiting allocator never locks a file that is about to vanish. Call it
// once the VM's processes have exited. It is idempotent.
func (id *ID) Release() error {
	if id == nil || id.f == nil {
		return nil
	}
	err := os.Remove(id.path)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	id.f.Close()
	id.f = nil
	if err != nil {
		return fmt.Errorf("jail: releasing uid %d: %w", id.UID, err)
	}
	return nil
}

// LockPath is the lock file that reserves the uid.
func (id *ID) LockPath() string { return id.path }

// Reclaim removes uid's lock file from lockDir when nobody holds it and no
// process runs with the uid: what a shim killed outright leaves behind once
// its QEMU is gone too. containerd's delete action calls it.
func Reclaim(lockDir string, uid uint32) error {
	path := filepath.Join(lockDir, strconv.FormatUint(uint64(uid), 10)+".lock")
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	id, err := tryLock(path, uid)
	if err != nil || id == nil {
		return err // held: a live VM's
	}
	if busy, err := inUse(uid); err != nil || busy {
		id.f.Close()
		return err
	}
	return id.Release()
}
