package shim

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestGuestCgroupNamespace: every container gets a cgroup namespace, and a
// read-only cgroup mount at /sys/fs/cgroup when it mounts /sys without
// one; a spec's own cgroup mount or namespace is kept as it is.
func TestGuestCgroupNamespace(t *testing.T) {
	sys := specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"ro"}}
	own := specs.Mount{Destination: "/sys/fs/cgroup/", Type: "cgroup", Source: "cgroup", Options: []string{"rw"}}
	for _, c := range []struct {
		name        string
		mounts      []specs.Mount
		namespaces  []specs.LinuxNamespace
		wantMount   bool // a cgroup mount was added
		wantMounts  int
		wantCgroups int // cgroup namespaces afterwards
	}{
		{"ctr default", []specs.Mount{sys}, []specs.LinuxNamespace{{Type: specs.PIDNamespace}}, true, 2, 1},
		{"CRI spec with its own mount", []specs.Mount{sys, own}, []specs.LinuxNamespace{{Type: specs.CgroupNamespace}}, false, 2, 1},
		{"no /sys", nil, nil, false, 0, 1},
		{"joined cgroup namespace", []specs.Mount{sys}, []specs.LinuxNamespace{{Type: specs.CgroupNamespace, Path: "/proc/7/ns/cgroup"}}, true, 2, 1},
	} {
		spec := &specs.Spec{Mounts: append([]specs.Mount(nil), c.mounts...), Linux: &specs.Linux{Namespaces: append([]specs.LinuxNamespace(nil), c.namespaces...)}}
		guestCgroupNamespace(spec)
		n := 0
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.CgroupNamespace {
				n++
			}
		}
		if n != c.wantCgroups {
			t.Errorf("%s: %d cgroup namespaces, want %d", c.name, n, c.wantCgroups)
		}
		if len(spec.Mounts) != c.wantMounts {
			t.Fatalf("%s: mounts %+v, want %d", c.name, spec.Mounts, c.wantMounts)
		}
		if c.wantMount {
			m := spec.Mounts[len(spec.Mounts)-1]
			if m.Destination != "/sys/fs/cgroup" || m.Type != "cgroup" || !slices.Contains(m.Options, "ro") {
				t.Errorf("%s: added mount %+v, want a read-only cgroup mount at /sys/fs/cgroup", c.name, m)
			}
		}
		if !c.wantMount && c.wantMounts == 2 && spec.Mounts[1].Options[0] != "rw" {
			t.Errorf("%s: the spec's own cgroup mount changed: %+v", c.name, spec.Mounts[1])
		}
	}
	// A spec without linux is left alone.
	spec := &specs.Spec{Mounts: []specs.Mount{sys}}
	guestCgroupNamespace(spec)
	if len(spec.Mounts) != 1 {
		t.Errorf("spec without linux: mounts %+v", spec.Mounts)
	}
}
