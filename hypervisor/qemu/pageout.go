package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

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
	var out []region
	sc := bufio.NewScanner(bytes.NewReader(maps))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		// "start-end perms offset major:minor inode [path]"; smaps adds
		// "Key: value kB" lines, which this skips.
		if len(f) < 5 || strings.HasSuffix(f[0], ":") {
			continue
		}
		lo, hi, ok1 := strings.Cut(f[0], "-")
		maj, min, ok2 := strings.Cut(f[3], ":")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%s:%d: malformed mapping line %q", path, n, sc.Text())
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		major, err3 := strconv.ParseUint(maj, 16, 32)
		minor, err4 := strconv.ParseUint(min, 16, 32)
		inode, err5 := strconv.ParseUint(f[4], 10, 64)
		if err := errors.Join(err1, err2, err3, err4, err5); err != nil || end < start {
			return nil, fmt.Errorf("%s:%d: malformed mapping line %q", path, n, sc.Text())
		}
		mapped := mappedPath(sc.Text())
		for _, want := range files {
			if want.matches(uint32(major), uint32(minor), inode, mapped) {
				out = append(out, region{start, end})
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// mappedPath is the path field of a maps line, which may hold spaces: the
// rest of the line after the fifth field.
func mappedPath(line string) string {
	rest := line
	for i := 0; i < 5; i++ {
		rest = strings.TrimLeft(rest, " \t")
		j := strings.IndexAny(rest, " \t")
		if j < 0 {
			return ""
		}
		rest = rest[j:]
	}
	return strings.TrimSpace(rest)
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
