// Package procmaps parses /proc/<pid>/maps and /proc/<pid>/smaps: which
// files and memory a process maps, and (smaps) how much of each is
// resident. The shim pages out QEMU's boot files with it; the bench and
// the tests account for QEMU's memory with it.
package procmaps

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Mapping is one mapping: its address range, access bits ("rwxp"), the
// device and inode of its file (0 for anonymous memory), its path (""
// for anonymous memory; "[heap]", "/memfd:name (deleted)", a file), and,
// from smaps, its Pss and Rss in KiB.
type Mapping struct {
	Start, End   uint64
	Perms        string
	Major, Minor uint32
	Inode        uint64
	Path         string
	PssKiB       int64
	RssKiB       int64
}

// Size is the mapping's address-space size in bytes.
func (m Mapping) Size() uint64 { return m.End - m.Start }

// Read reads <procRoot>/<pid>/<file>, file being "maps" or "smaps".
func Read(procRoot string, pid int, file string) ([]Mapping, error) {
	path := filepath.Join(procRoot, strconv.Itoa(pid), file)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(b, path)
}

// Parse parses maps or smaps text: a header line per mapping ("start-end
// perms offset major:minor inode [path]"), in smaps followed by "Key:
// value [kB]" lines, of which Pss and Rss are kept. path names the text
// in errors, which give its line.
func Parse(b []byte, path string) ([]Mapping, error) {
	var out []Mapping
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
				dst = &out[len(out)-1].PssKiB
			case "Rss":
				dst = &out[len(out)-1].RssKiB
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
		m, why := parseHeader(line)
		if why != "" {
			return nil, fmt.Errorf("%s:%d: malformed mapping line %q: %s", path, n, line, why)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// parseHeader parses "start-end perms offset major:minor inode [path]";
// the path may hold spaces ("/memfd:mem (deleted)"). It says what is
// wrong, "" when nothing is.
func parseHeader(line string) (Mapping, string) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return Mapping{}, "fewer than 5 fields"
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if !ok || err1 != nil || err2 != nil || end < start {
		return Mapping{}, "bad address range"
	}
	if len(f[1]) != 4 {
		return Mapping{}, "bad permissions"
	}
	maj, min, ok := strings.Cut(f[3], ":")
	major, err1 := strconv.ParseUint(maj, 16, 32)
	minor, err2 := strconv.ParseUint(min, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return Mapping{}, "bad device"
	}
	inode, err := strconv.ParseUint(f[4], 10, 64)
	if err != nil {
		return Mapping{}, "bad inode"
	}
	m := Mapping{Start: start, End: end, Perms: f[1], Major: uint32(major), Minor: uint32(minor), Inode: inode}
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
		m.Path = strings.TrimSpace(rest)
	}
	return m, ""
}
