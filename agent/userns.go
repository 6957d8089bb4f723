package agent

import (
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// sysfsForUserNamespace makes a user-namespaced container that shares the
// agent's network namespace (the pod's) mount the guest's /sys instead of
// a new sysfs. The kernel lets a process mount sysfs only with
// CAP_SYS_ADMIN over the user namespace that owns its network namespace,
// and the pod's network namespace belongs to the guest's initial one, so
// the mount fails with EPERM; runc's rootless specs bind /sys the same way
// for that reason. The bind is recursively read-only ("rro"): a mapped
// root could not write there anyway, and the guest's submounts (its whole
// cgroup tree at /sys/fs/cgroup) must not become writable through it. The
// container's own cgroup is mounted over /sys/fs/cgroup when the spec asks
// for a cgroup mount there, as containerd's CRI and nerdctl do.
func sysfsForUserNamespace(spec *specs.Spec) {
	if spec.Linux == nil || !hasNamespace(spec, specs.UserNamespace) || hasNamespace(spec, specs.NetworkNamespace) {
		return
	}
	for i, m := range spec.Mounts {
		if m.Type != "sysfs" || path.Clean(m.Destination) != "/sys" {
			continue
		}
		spec.Mounts[i] = specs.Mount{
			Destination: m.Destination,
			Type:        "bind",
			Source:      "/sys",
			Options:     []string{"rbind", "nosuid", "noexec", "nodev", "rro"},
		}
	}
}

func hasNamespace(spec *specs.Spec, t specs.LinuxNamespaceType) bool {
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == t {
			return true
		}
	}
	return false
}
