package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/vmpod/vmpod/hostcgroup"
)

// proc is one entry of /proc.
type proc struct {
	pid, ppid int
	comm      string
	cmdline   string
}

func (p proc) String() string {
	return fmt.Sprintf("%d %s (%s)", p.pid, p.comm, p.cmdline)
}

// listProcs reads the process table; processes that vanish meanwhile and
// zombies (already dead, waiting for their parent) are skipped.
func listProcs() []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parens.
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		rest := strings.Fields(s[end+1:])
		if len(rest) < 2 || rest[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(rest[1])
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out = append(out, proc{
			pid:     pid,
			ppid:    ppid,
			comm:    s[open+1 : end],
			cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")),
		})
	}
	return out
}

// processes lists what belongs to this daemon, besides the daemon itself:
// every process whose command line names its directory or one of the
// vmpod state dirs (shims carry `-address <dir>/containerd.sock`), and all
// their descendants (containers, QEMU, virtiofsd).
func (c *Containerd) processes() []proc {
	procs := listProcs()
	self, daemon := os.Getpid(), -1
	if c.cmd != nil && c.cmd.Process != nil {
		daemon = c.cmd.Process.Pid
	}
	marks := append([]string{c.Dir}, c.opts.StateDirs...)
	owned := map[int]bool{}
	for _, p := range procs {
		if p.pid == daemon || p.pid == self {
			continue
		}
		for _, m := range marks {
			if m != "" && strings.Contains(p.cmdline, m) {
				owned[p.pid] = true
			}
		}
	}
	// Descendants: repeat until no new child is found (the table is not
	// ordered by ancestry).
	for changed := true; changed; {
		changed = false
		for _, p := range procs {
			if !owned[p.pid] && owned[p.ppid] && p.pid != self {
				owned[p.pid] = true
				changed = true
			}
		}
	}
	var out []proc
	for _, p := range procs {
		if owned[p.pid] {
			out = append(out, p)
		}
	}
	return out
}

// AssertClean fails t unless the daemon holds no task or container and
// nothing it started remains: no shim, QEMU, virtiofsd or container
// process, no mount under its directory or the vmpod state dirs, and no
// entry in the state dirs. Processes get a few seconds to exit, since a
// shim leaves after containerd's Delete returns.
func (c *Containerd) AssertClean(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, what := range []string{"tasks", "containers"} {
		out, _, err := c.Ctr(ctx, what, "list", "-q")
		if err != nil {
			t.Errorf("listing %s: %v", what, err)
		} else if ids := strings.Fields(out); len(ids) > 0 {
			t.Errorf("%s remain in namespace %s: %s", what, Namespace, strings.Join(ids, ", "))
		}
	}
	var leaks []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		leaks = c.leaks()
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, l := range leaks {
		t.Errorf("leaked %s", l)
	}
}

func (c *Containerd) leaks() []string {
	var out []string
	for _, p := range c.processes() {
		out = append(out, "process "+p.String())
	}
	for _, dir := range append([]string{c.Dir}, c.opts.StateDirs...) {
		mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
		if err != nil {
			out = append(out, fmt.Sprintf("mount? reading mountinfo: %v", err))
		}
		for _, m := range mounts {
			out = append(out, "mount "+m.Mountpoint)
		}
	}
	for _, dir := range c.opts.StateDirs {
		ents, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			out = append(out, fmt.Sprintf("state dir %s: %v", dir, err))
		}
		for _, e := range ents {
			out = append(out, "state "+filepath.Join(dir, e.Name()))
		}
	}
	out = append(out, cgroupLeaks()...)
	sort.Strings(out)
	return out
}

// cgroupLeaks lists the cgroups left under the namespace's cgroup (where
// containerd's default spec puts each container: /<namespace>/<id>), in
// every hierarchy: runc removes a container's cgroup with it, and so must
// vmpod the one it puts the VM in.
func cgroupLeaks() []string {
	g, err := hostcgroup.Open("/" + Namespace)
	if err != nil {
		return nil // no cgroups here at all
	}
	var out []string
	for _, dir := range g.Dirs() {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, "cgroup "+filepath.Join(dir, e.Name()))
			}
		}
	}
	if len(out) == 0 {
		// runc leaves the namespace's cgroup itself; the test removes it.
		for _, dir := range g.Dirs() {
			_ = os.Remove(dir)
		}
	}
	return out
}
