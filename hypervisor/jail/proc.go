package jail

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
)

// uidInUse reports whether any process has id as one of its real,
// effective, saved or file-system uids or gids. Processes that exit while
// it reads are skipped, and so are zombies: they run nothing (a killed
// QEMU waits as one until containerd, its new parent, reaps it).
func uidInUse(id uint32) (bool, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return false, fmt.Errorf("jail: reading /proc: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return false, fmt.Errorf("jail: reading /proc: %w", err)
	}
	for _, name := range names {
		if _, err := strconv.Atoi(name); err != nil {
			continue
		}
		status, err := readStatus("/proc/" + name + "/status")
		if err != nil {
			continue // gone
		}
		if statusHasID(status, id) && !zombie(status) {
			return true, nil
		}
	}
	return false, nil
}

func readStatus(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Uid and Gid come within the first kilobyte; 8 KiB is ample.
	return io.ReadAll(io.LimitReader(f, 8<<10))
}

// statusHasID reports whether the Uid: or Gid: line of a /proc/PID/status
// text holds id.
func statusHasID(status []byte, id uint32) bool {
	want := strconv.FormatUint(uint64(id), 10)
	for _, line := range bytes.Split(status, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("Uid:"))
		if !ok {
			rest, ok = bytes.CutPrefix(line, []byte("Gid:"))
		}
		if !ok {
			continue
		}
		for _, f := range bytes.Fields(rest) {
			if string(f) == want {
				return true
			}
		}
	}
	return false
}

// zombie reports whether a /proc/PID/status text is a zombie's.
func zombie(status []byte) bool {
	for _, line := range bytes.Split(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("State:")); ok {
			return bytes.HasPrefix(bytes.TrimSpace(rest), []byte("Z"))
		}
	}
	return false
}
