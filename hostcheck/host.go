package hostcheck

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// mountinfoPath is read for the cgroup check; a variable for tests.
var mountinfoPath = "/proc/self/mountinfo"

// tunDevice is the tun/tap clone device; a variable for tests.
var tunDevice = "/dev/net/tun"

func readMountinfo() (string, error) {
	f, err := os.Open(mountinfoPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// Bounded: a host with a great many mounts still fits in 16 MiB.
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", mountinfoPath, err)
	}
	return string(b), nil
}

// cgroupMount is one cgroup filesystem from mountinfo.
type cgroupMount struct {
	point       string
	v2          bool
	controllers []string // v1 only
}

// parseCgroupMounts picks the cgroup and cgroup2 mounts out of a
// /proc/self/mountinfo text: "id parent dev root point opts [optional...] -
// fstype source superopts".
func parseCgroupMounts(mountinfo string) []cgroupMount {
	var ms []cgroupMount
	for line := range strings.Lines(mountinfo) {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, sf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(sf) < 1 {
			continue
		}
		switch sf[0] {
		case "cgroup2":
			ms = append(ms, cgroupMount{point: pf[4], v2: true})
		case "cgroup":
			m := cgroupMount{point: pf[4]}
			if len(sf) >= 3 {
				m.controllers = v1Controllers(sf[2])
			}
			ms = append(ms, m)
		}
	}
	return ms
}

// v1Controllers drops the mount options from a v1 hierarchy's super
// options, leaving its controllers ("rw,nosuid,cpu,cpuacct" → cpu,
// cpuacct). Named hierarchies (name=systemd) have none.
func v1Controllers(superOpts string) []string {
	var cs []string
	for _, o := range strings.Split(superOpts, ",") {
		switch {
		case o == "rw", o == "ro", o == "xattr", o == "clone_children", o == "noprefix",
			o == "cpuset_v2_mode", o == "favordynmods",
			strings.Contains(o, "="), strings.HasPrefix(o, "no"):
			continue
		}
		cs = append(cs, o)
	}
	return cs
}

// checkCgroups reports the host's cgroup layout: v2 (unified), v1, or a
// hybrid of v1 controllers with an empty v2 hierarchy beside them. vmpod's
// guests always have cgroup v2; the host's layout matters to containerd.
func checkCgroups(mountinfo string, readErr error) Result {
	const name = "cgroups"
	if readErr != nil {
		return Result{Name: name, Status: Warn, Reason: "cannot read the mount table: " + readErr.Error(),
			Fix: "run vmpod check where /proc is mounted"}
	}
	var v1, v2 []string
	var controllers []string
	for _, m := range parseCgroupMounts(mountinfo) {
		if m.v2 {
			v2 = append(v2, m.point)
			continue
		}
		v1 = append(v1, m.point)
		controllers = append(controllers, m.controllers...)
	}
	slices.Sort(controllers)
	controllers = slices.Compact(controllers)
	switch {
	case len(v1) == 0 && len(v2) == 0:
		return Result{Name: name, Status: Warn, Reason: "no cgroup filesystem is mounted",
			Fix: "mount cgroup2 on /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup); containerd needs cgroups"}
	case len(v1) == 0:
		return Result{Name: name, Status: Pass, Reason: "v2 (unified) at " + strings.Join(v2, ", ")}
	case len(v2) == 0:
		return Result{Name: name, Status: Pass, Reason: "v1 (legacy): controllers " + strings.Join(controllers, ", ")}
	}
	return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("v1 hybrid: controllers %s on v1; cgroup2 at %s",
		strings.Join(controllers, ", "), strings.Join(v2, ", "))}
}

// checkTun checks the tun/tap clone device that pod networking
// (runtime.network_model = "tcfilter") creates each pod's tap with.
func checkTun(netModel, path string) Result {
	const name = "tun"
	err := openCharDevice(path)
	switch {
	case err == nil:
		return Result{Name: name, Status: Pass, Reason: path}
	case netModel == "none":
		return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("not needed (runtime.network_model = \"none\"): %v", err)}
	}
	return Result{Name: name, Status: Warn,
		Reason: fmt.Sprintf("%v: pods with a network namespace cannot get a tap device", err),
		Fix:    "modprobe tun (or mknod " + path + " c 10 200)"}
}

func openCharDevice(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("%s: %w", path, errNotCharDevice)
	}
	// Opening checks that a driver answers behind the node.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

var errNotCharDevice = errors.New("not a character device")
