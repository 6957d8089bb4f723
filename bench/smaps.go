package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// mapping is one entry of /proc/<pid>/smaps: its address range, access
// bits ("rwxp"), backing path ("" for anonymous memory; "[heap]",
// "/memfd:name (deleted)", a file), and its Pss and Rss in KiB.
type mapping struct {
	start, end uint64
	perms      string
	path       string
	pssKiB     int64
	rssKiB     int64
}

// sizeMiB is the mapping's address-space size.
func (m mapping) sizeMiB() float64 { return float64(m.end-m.start) / (1 << 20) }

// readSmaps reads /proc/<pid>/smaps.
func readSmaps(procRoot string, pid int) ([]mapping, error) {
	path := filepath.Join(procRoot, strconv.Itoa(pid), "smaps")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseSmaps(b, path)
}

// parseSmaps parses smaps text: a header line per mapping ("start-end
// perms offset dev inode [path]") followed by "Key: value [kB]" lines, of
// which Pss and Rss are kept. path names the file in errors.
func parseSmaps(b []byte, path string) ([]mapping, error) {
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		key, val, isField := strings.Cut(line, ":")
		if isField && !strings.Contains(key, " ") && !strings.Contains(key, "-") {
			if len(out) == 0 {
				return nil, fmt.Errorf("%s:%d: %q before any mapping", path, n, line)
			}
			var dst *int64
			switch key {
			case "Pss":
				dst = &out[len(out)-1].pssKiB
			case "Rss":
				dst = &out[len(out)-1].rssKiB
			default:
				continue
			}
			f := strings.Fields(val)
			if len(f) != 2 || f[1] != "kB" {
				return nil, fmt.Errorf("%s:%d: malformed %s line %q", path, n, key, line)
			}
			v, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("%s:%d: malformed %s value %q", path, n, key, f[0])
			}
			*dst = v
			continue
		}
		m, err := parseSmapsHeader(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// parseSmapsHeader parses "start-end perms offset dev inode [path]"; the
// path may hold spaces ("/memfd:mem (deleted)").
func parseSmapsHeader(line string) (mapping, error) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return mapping{}, fmt.Errorf("malformed mapping line %q", line)
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return mapping{}, fmt.Errorf("malformed address range in %q", line)
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return mapping{}, fmt.Errorf("malformed address range in %q", line)
	}
	if len(f[1]) != 4 {
		return mapping{}, fmt.Errorf("malformed permissions in %q", line)
	}
	m := mapping{start: start, end: end, perms: f[1]}
	if len(f) > 5 {
		// The path is the rest of the line after the inode field.
		rest := line
		for i := 0; i < 5; i++ {
			rest = strings.TrimLeft(rest, " \t")
			if j := strings.IndexAny(rest, " \t"); j >= 0 {
				rest = rest[j:]
			} else {
				rest = ""
			}
		}
		m.path = strings.TrimSpace(rest)
	}
	return m, nil
}

// QEMU's memory, by what it holds. The order is the report's.
const (
	partGuestRAM = "guest RAM (memfd)"
	partTCG      = "TCG translation cache"
	partKernel   = "guest kernel file"
	partInitrd   = "initrd file"
	partHeap     = "heap"
	partBinary   = "QEMU binary"
	partLibs     = "shared libraries"
	partAnon     = "other anonymous (thread stacks, allocator arenas)"
	partOther    = "other"
)

var qemuParts = []string{partGuestRAM, partTCG, partKernel, partInitrd, partHeap, partBinary, partLibs, partAnon, partOther}

// classifyQEMU sums a QEMU's mappings' PSS (MiB) by what they hold. The
// guest RAM is a memfd ("memfd:" in the path; DIMMs too); the TCG
// translation cache is QEMU's one anonymous mapping with write and execute
// both allowed; kernel and initrd are the files the VM was given.
func classifyQEMU(ms []mapping, binary, kernel, initrd string) map[string]float64 {
	out := make(map[string]float64, len(qemuParts))
	for _, m := range ms {
		var part string
		switch {
		case strings.HasPrefix(m.path, "/memfd:"):
			part = partGuestRAM
		case m.path == "" && strings.HasPrefix(m.perms, "rwx"):
			part = partTCG
		case m.path == kernel && kernel != "":
			part = partKernel
		case m.path == initrd && initrd != "":
			part = partInitrd
		case m.path == "[heap]":
			part = partHeap
		case m.path == binary && binary != "":
			part = partBinary
		case strings.Contains(filepath.Base(m.path), ".so"):
			part = partLibs
		case m.path == "" || m.path == "[stack]":
			part = partAnon
		default:
			part = partOther
		}
		out[part] += float64(m.pssKiB) / 1024
	}
	return out
}

// guestRAMMiB is the PSS of a process's memfd mappings: its share of the
// guest RAM (QEMU's, and the vhost-user backends' that map it too).
func guestRAMMiB(ms []mapping) float64 {
	var kib int64
	for _, m := range ms {
		if strings.HasPrefix(m.path, "/memfd:") {
			kib += m.pssKiB
		}
	}
	return float64(kib) / 1024
}
