// Package leakcheck verifies that a test left nothing behind: no process,
// mount, network device, network namespace or directory that belongs to the
// paths the test owns.
//
// It attributes processes and mounts to a test by path rather than by name,
// so that tests running side by side on one machine do not blame each other:
// a process belongs to a test when its command line, working directory or
// root directory lies under one of the test's roots.
package leakcheck

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Snapshot is what lies under a set of roots at one moment.
type Snapshot struct {
	Processes []string // "pid comm"
	Mounts    []string // mount points
	Links     []string // network device names matching LinkPrefixes
	Netns     []string // entries of /run/netns
}

// Options chooses what a check looks at.
type Options struct {
	// Roots are the directories the test owns (state dirs, sockets, rootfs).
	Roots []string
	// LinkPrefixes names network devices the test may create (for example
	// "tap"); devices with these prefixes that appear are leaks.
	LinkPrefixes []string
	// NetnsPrefixes names the entries of /run/netns the test may create;
	// entries with these prefixes that appear are leaks. (Other tests on
	// the machine, CNI among them, add their own at the same time.)
	NetnsPrefixes []string
}

// Take records the current state for opts.
func Take(opts Options) Snapshot {
	var s Snapshot
	s.Processes = processesUnder(opts.Roots)
	s.Mounts = mountsUnder(opts.Roots)
	if len(opts.LinkPrefixes) > 0 {
		if ifs, err := net.Interfaces(); err == nil {
			for _, i := range ifs {
				if hasAnyPrefix(i.Name, opts.LinkPrefixes) {
					s.Links = append(s.Links, i.Name)
				}
			}
		}
	}
	if len(opts.NetnsPrefixes) > 0 {
		if ents, err := os.ReadDir("/run/netns"); err == nil {
			for _, e := range ents {
				if hasAnyPrefix(e.Name(), opts.NetnsPrefixes) {
					s.Netns = append(s.Netns, e.Name())
				}
			}
		}
	}
	return s
}

// Diff lists what after has that before had not.
func Diff(before, after Snapshot) []string {
	var out []string
	add := func(kind string, b, a []string) {
		seen := make(map[string]bool, len(b))
		for _, x := range b {
			seen[x] = true
		}
		for _, x := range a {
			if !seen[x] {
				out = append(out, kind+" "+x)
			}
		}
	}
	add("process", before.Processes, after.Processes)
	add("mount", before.Mounts, after.Mounts)
	add("link", before.Links, after.Links)
	add("netns", before.Netns, after.Netns)
	sort.Strings(out)
	return out
}

// Check snapshots now and, when the test ends, fails it if anything new
// remains. Processes get a few seconds to go away after the test's own
// cleanup has run. Register it before the cleanups that tear things down, so
// that it runs after them.
func Check(t testing.TB, opts Options) {
	t.Helper()
	before := Take(opts)
	t.Cleanup(func() {
		var leaks []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaks = Diff(before, Take(opts))
			if len(leaks) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, l := range leaks {
			t.Errorf("leaked %s", l)
		}
	})
}

// NoDirs fails the test if any of dirs still exists.
func NoDirs(t testing.TB, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if _, err := os.Lstat(d); err == nil {
			t.Errorf("leaked directory %s", d)
		}
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func under(p string, roots []string) bool {
	for _, r := range roots {
		if r == "" {
			continue
		}
		if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") || strings.Contains(p, r) {
			return true
		}
	}
	return false
}

func processesUnder(roots []string) []string {
	if len(roots) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		cwd, _ := os.Readlink(filepath.Join(dir, "cwd"))
		root, _ := os.Readlink(filepath.Join(dir, "root"))
		args := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if under(args, roots) || under(cwd, roots) || (root != "/" && under(root, roots)) {
			if isZombie(dir) {
				continue
			}
			out = append(out, fmt.Sprintf("%d %s (%s)", pid, strings.TrimSpace(string(comm)), strings.TrimSpace(args)))
		}
	}
	return out
}

func isZombie(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return true // gone
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func mountsUnder(roots []string) []string {
	if len(roots) == 0 {
		return nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescape(fields[4])
		for _, r := range roots {
			if mp == r || strings.HasPrefix(mp, strings.TrimSuffix(r, "/")+"/") {
				out = append(out, mp)
				break
			}
		}
	}
	return out
}

// unescape undoes the octal escapes of /proc/self/mountinfo.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
