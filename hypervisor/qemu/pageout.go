package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/vmpod/vmpod/internal/procmaps"
	"golang.org/x/sys/unix"
)

// ReleaseBootFiles asks the host kernel to page out QEMU's mappings of the
// guest kernel and initrd, once the guest has booted. QEMU keeps both
// files mapped for the VM's life (ROM blobs and fw_cfg data, to load
// them again on a reset), about 22 MiB of an idle pod with vmpod's
// kernel, but reads them only while loading the guest: vmpod runs QEMU
// with -no-reboot, so a reset ends QEMU instead. A page QEMU would touch
// again is read back from the file, so this only costs time, never
// correctness. Pages another process maps too (another pod's QEMU) stay:
// they are shared, and each pod's share of them is small. The pages
// leave the host's page cache as well, so the next pod's start reads the
// files from disk (see docs/performance.md).
//
// It returns how many bytes of mappings were advised.
func (q *QEMU) ReleaseBootFiles() (int64, error) {
	pid := q.Pid()
	if pid <= 0 {
		return 0, fmt.Errorf("qemu %s: not running", q.cfg.ID)
	}
	var files []fileID
	for _, p := range []string{q.cfg.Kernel, q.cfg.Initrd} {
		if p == "" {
			continue
		}
		id, err := statFileID(p)
		if err != nil {
			return 0, fmt.Errorf("qemu %s: %w", q.cfg.ID, err)
		}
		files = append(files, id)
	}
	n, err := pageOutFiles(pid, files)
	if err != nil {
		return n, fmt.Errorf("qemu %s: page out kernel and initrd mappings: %w", q.cfg.ID, err)
	}
	return n, nil
}

// fileID names a file as /proc/<pid>/maps does: device and inode, and
// its path with symbolic links resolved, for file systems (btrfs) whose
// maps show another device number than stat.
type fileID struct {
	major, minor uint32
	inode        uint64
	path         string
}

func statFileID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return fileID{}, fmt.Errorf("resolve %s: %w", path, err)
	}
	return fileID{major: unix.Major(st.Dev), minor: unix.Minor(st.Dev), inode: st.Ino, path: real}, nil
}

// matches reports whether a mapping of device major:minor, inode and
// path (maps' last field, "" if none) maps f.
func (f fileID) matches(major, minor uint32, inode uint64, path string) bool {
	if inode == 0 || inode != f.inode {
		return false
	}
	return (major == f.major && minor == f.minor) || (path != "" && path == f.path)
}

// region is an address range of a process.
type region struct{ start, end uint64 }

// fileRegions returns the address ranges of maps (/proc/<pid>/maps or
// smaps text) that map one of files. path names the text in errors.
func fileRegions(maps []byte, files []fileID, path string) ([]region, error) {
	ms, err := procmaps.Parse(maps, path)
	if err != nil {
		return nil, err
	}
	var out []region
	for _, m := range ms {
		for _, want := range files {
			if want.matches(m.Major, m.Minor, m.Inode, m.Path) {
				out = append(out, region{m.Start, m.End})
				break
			}
		}
	}
	return out, nil
}

// iovec is struct iovec with an address of another process.
type iovec struct {
	base uintptr
	len  uint64
}

// pageOutFiles advises MADV_PAGEOUT on pid's mappings of files, through
// process_madvise (Linux 5.10; the caller needs CAP_SYS_NICE and ptrace
// read access to pid, which root has over a jailed QEMU).
func pageOutFiles(pid int, files []fileID) (int64, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return 0, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	// Read the maps after opening the pidfd: were pid reused in between,
	// process_madvise would fail (ESRCH) rather than advise another.
	mapsPath := fmt.Sprintf("/proc/%d/maps", pid)
	b, err := os.ReadFile(mapsPath)
	if err != nil {
		return 0, err
	}
	regions, err := fileRegions(b, files, mapsPath)
	if err != nil {
		return 0, err
	}
	if len(regions) == 0 {
		return 0, nil
	}
	iov := make([]iovec, len(regions))
	var want int64
	for i, r := range regions {
		iov[i] = iovec{base: uintptr(r.start), len: r.end - r.start}
		want += int64(r.end - r.start)
	}
	n, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), unix.MADV_PAGEOUT, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("process_madvise %d (%d mappings, %d bytes): %w", pid, len(iov), want, errno)
	}
	return int64(n), nil
}
