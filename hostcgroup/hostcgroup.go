// Package hostcgroup puts a pod's host processes (QEMU, virtiofsd) into the
// cgroup that the sandbox container's spec names (linux.cgroupsPath).
//
// With runc that cgroup holds the pause process; with vmpod it holds the
// VM. The kubelet's pod accounting and containerd's pod stats (which read
// the pod's parent cgroup) then see what the pod really costs on the host.
// Only placement is done here, no limits: the kubelet sets those on the pod
// cgroup, which is the parent of this one.
//
// Both cgroup v2 and v1 (including the hybrid layout, where containerd and
// runc also use v1) are supported, written through cgroupfs directly.
package hostcgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mountRoot is where the cgroup file systems are mounted.
const mountRoot = "/sys/fs/cgroup"

// Group is one cgroup, as a directory in each hierarchy it lives in (one
// for v2, one per mounted hierarchy for v1).
type Group struct {
	hs   []hierarchy
	dirs []string
}

// Dirs returns the group's directories, one per hierarchy.
func (g *Group) Dirs() []string { return append([]string(nil), g.dirs...) }

// Open resolves cgroupsPath (as an OCI spec gives it: absolute, relative to
// this process's cgroup, or systemd's "slice:prefix:name") to the
// directories it names, without creating anything.
func Open(cgroupsPath string) (*Group, error) {
	rel, err := resolve(cgroupsPath)
	if err != nil {
		return nil, err
	}
	hs, err := hierarchies()
	if err != nil {
		return nil, err
	}
	g := &Group{hs: hs}
	for _, h := range hs {
		base := "/"
		if !filepath.IsAbs(rel) {
			if base, err = ownCgroup(h); err != nil {
				return nil, fmt.Errorf("cgroup path %q is relative: %w", cgroupsPath, err)
			}
		}
		// Rooted first, so that ".." cannot climb out of the hierarchy.
		g.dirs = append(g.dirs, filepath.Join(h.mount, filepath.Join("/", base, rel)))
	}
	return g, nil
}

// Create makes the cgroup named by cgroupsPath in every hierarchy, with
// its missing parents, as runc does for a container's cgroup.
func Create(cgroupsPath string) (_ *Group, retErr error) {
	g, err := Open(cgroupsPath)
	if err != nil {
		return nil, err
	}
	var made []string
	defer func() {
		if retErr != nil {
			for i := len(made) - 1; i >= 0; i-- {
				_ = unix.Rmdir(made[i])
			}
		}
	}()
	for i, h := range g.hs {
		created, err := mkdirCgroup(h, g.dirs[i])
		made = append(made, created...)
		if err != nil {
			return nil, fmt.Errorf("create cgroup %s: %w", cgroupsPath, err)
		}
	}
	return g, nil
}

// Add moves process pid, and every process it has forked, into the group.
// Moving the children too matters for daemons that fork early (virtiofsd
// serves from a child in its own namespaces).
func (g *Group) Add(pid int) error {
	for _, p := range append([]int{pid}, descendants(pid)...) {
		for _, dir := range g.dirs {
			err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p)), 0)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("move process %d into cgroup %s: %w", p, dir, err)
			}
		}
	}
	return nil
}

// Join moves this process (all its threads) into the group, as Kata's
// sandbox_cgroup_only does with its shim, so that the shim's CPU and
// memory count with the pod's. leave moves it back to the cgroups it was
// in; it must come before Delete, since a group this process is in cannot
// be removed. On error nothing moved.
func (g *Group) Join() (leave func() error, err error) {
	pid := os.Getpid()
	var orig []string
	for _, h := range g.hs {
		own, err := ownCgroup(h)
		if err != nil {
			return nil, err
		}
		orig = append(orig, filepath.Join(h.mount, filepath.Join("/", own)))
	}
	moveTo := func(dirs []string) error {
		var errs []error
		for _, dir := range dirs {
			errs = append(errs, movePid(dir, pid))
		}
		return errors.Join(errs...)
	}
	for i, dir := range g.dirs {
		if err := moveTo([]string{dir}); err != nil {
			if uerr := moveTo(orig[:i]); uerr != nil {
				err = errors.Join(err, fmt.Errorf("move back: %w", uerr))
			}
			return nil, err
		}
	}
	return func() error { return moveTo(orig) }, nil
}

// Join moves process pid (alone, not its children) into the existing
// cgroup cgroupsPath, in every hierarchy where it exists, creating
// nothing: what runc's shim does with its ShimCgroup option (cgroup1.Load
// of a static path skips the hierarchies that lack it). A cgroup that
// exists in no hierarchy is an error.
func Join(cgroupsPath string, pid int) error {
	g, err := Open(cgroupsPath)
	if err != nil {
		return err
	}
	joined := 0
	for _, dir := range g.dirs {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := movePid(dir, pid); err != nil {
			return err
		}
		joined++
	}
	if joined == 0 {
		return fmt.Errorf("cgroup %s exists in no hierarchy (looked for %s): %w", cgroupsPath, strings.Join(g.dirs, ", "), os.ErrNotExist)
	}
	return nil
}

// movePid moves process pid (alone, not its children) into cgroup dir.
func movePid(dir string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move process %d into cgroup %s: %w", pid, dir, err)
	}
	return nil
}

// Delete removes the group's directories (not its parents, which may be
// shared with other pods), waiting up to the context's deadline for
// exiting processes to leave. A group that is already gone is not an
// error.
func (g *Group) Delete(ctx context.Context) error {
	var errs []error
	for _, dir := range g.dirs {
		if err := rmdirWait(ctx, dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func rmdirWait(ctx context.Context, dir string) error {
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: still has processes: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// descendants returns the processes forked by pid, transitively.
func descendants(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	for _, t := range tasks {
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", t.Name(), "children"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			child, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			out = append(out, child)
			out = append(out, descendants(child)...)
		}
	}
	return out
}

// hierarchy is one mounted cgroup hierarchy.
type hierarchy struct {
	mount string
	v2    bool
	// controllers are a v1 hierarchy's controllers ("cpu", "name=systemd").
	controllers []string
	// cpuset: a v1 cpuset cgroup takes no processes until its cpus and
	// mems are set.
	cpuset bool
}

// hierarchies returns the hierarchies to place processes in: the unified
// one when /sys/fs/cgroup is cgroup v2, else every mounted v1 hierarchy
// and, in the hybrid layout, the v2 one at unified/ (which has no
// controllers; runc puts its containers there too).
func hierarchies() ([]hierarchy, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(mountRoot, &st); err != nil {
		return nil, fmt.Errorf("cgroup file system at %s: %w", mountRoot, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return []hierarchy{{mount: mountRoot, v2: true}}, nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	var hs []hierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [tags] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || fields[3] != "/" {
			continue
		}
		mount, fstype := fields[4], tail[0]
		if (fstype != "cgroup" && fstype != "cgroup2") || !strings.HasPrefix(mount, mountRoot+"/") || seen[fstype+tail[2]] {
			continue
		}
		seen[fstype+tail[2]] = true
		opts := strings.Split(tail[2], ",")
		hs = append(hs, hierarchy{mount: mount, v2: fstype == "cgroup2", controllers: opts, cpuset: contains(opts, "cpuset")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no cgroup hierarchy mounted under %s", mountRoot)
	}
	return hs, nil
}

// mkdirCgroup creates target, and its missing parents, in hierarchy h,
// returning the directories it made (deepest last).
func mkdirCgroup(h hierarchy, target string) ([]string, error) {
	rel, err := filepath.Rel(h.mount, target)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("cgroup %s is outside hierarchy %s", target, h.mount)
	}
	var made []string
	dir := h.mount
	for _, part := range strings.Split(rel, "/") {
		if part == "." {
			continue
		}
		parent := dir
		dir = filepath.Join(dir, part)
		if h.v2 {
			enableControllers(parent)
		}
		err := unix.Mkdir(dir, 0o755)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return made, err
		}
		made = append(made, dir)
		if h.cpuset {
			if err := inheritCpuset(parent, dir); err != nil {
				return made, err
			}
		}
	}
	return made, nil
}

// enableControllers delegates every controller parent has to its
// children, as runc does, so that memory and CPU are accounted below it.
// It is best effort: a controller the parent cannot delegate (it has
// processes, or the controller is threaded) is left out.
func enableControllers(parent string) {
	data, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return
	}
	for _, c := range strings.Fields(string(data)) {
		_ = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+"+c), 0)
	}
}

// inheritCpuset copies the parent's CPUs and memory nodes into a new v1
// cpuset cgroup, without which it takes no processes.
func inheritCpuset(parent, dir string) error {
	for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
		data, err := os.ReadFile(filepath.Join(parent, file))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, file), data, 0); err != nil {
			return fmt.Errorf("set %s of %s: %w", file, dir, err)
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// resolve turns an OCI cgroupsPath into a path below a hierarchy's root:
// absolute paths are kept, relative ones are later taken from this
// process's cgroup (runc's rule), and systemd's "slice:prefix:name" is
// expanded as runc's systemd driver names the unit
// ("/a.slice/a-b.slice/prefix-name.scope").
func resolve(cgroupsPath string) (string, error) {
	if cgroupsPath == "" {
		return "", errors.New("empty cgroup path")
	}
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 {
		if strings.Contains(cgroupsPath, ":") {
			return "", fmt.Errorf("cgroup path %q: a systemd path is slice:prefix:name", cgroupsPath)
		}
		return cgroupsPath, nil
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return "", fmt.Errorf("cgroup path %q: %w", cgroupsPath, err)
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		if name == "" || strings.Contains(name, "/") {
			return "", fmt.Errorf("cgroup path %q: bad unit name %q", cgroupsPath, name)
		}
		unit = name + ".scope"
		if prefix != "" {
			unit = prefix + "-" + unit
		}
	}
	return path.Join(dir, unit), nil
}

// expandSlice turns "a-b-c.slice" into "/a.slice/a-b.slice/a-b-c.slice",
// as systemd nests slices.
func expandSlice(slice string) (string, error) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("bad slice name %q", slice)
	}
	if name == "-" {
		return "/", nil
	}
	var dir, prefix strings.Builder
	for _, comp := range strings.Split(name, "-") {
		if comp == "" {
			return "", fmt.Errorf("bad slice name %q", slice)
		}
		prefix.WriteString(comp)
		dir.WriteString("/" + prefix.String() + ".slice")
		prefix.WriteString("-")
	}
	return dir.String(), nil
}

// ownCgroup returns this process's cgroup in hierarchy h, from
// /proc/self/cgroup.
func ownCgroup(h hierarchy) (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if h.v2 {
			if parts[0] == "0" && parts[1] == "" {
				return parts[2], nil
			}
			continue
		}
		match := parts[1] != ""
		for _, c := range strings.Split(parts[1], ",") {
			match = match && contains(h.controllers, c)
		}
		if match {
			return parts[2], nil
		}
	}
	return "", fmt.Errorf("no cgroup of this process in hierarchy %s", h.mount)
}
