package shim

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// containerTypeSandbox is the CRI container type of a pod's sandbox (pause)
// container.
const containerTypeSandbox = "sandbox"

// podRole is where a container's spec places it.
type podRole struct {
	// sandboxID is the pod's id; for a container outside any pod (ctr,
	// nerdctl), its own id.
	sandboxID string
	// joins is true for a CRI container that joins an existing pod.
	joins bool
	// criSandbox is true for a CRI sandbox container, which starts its pod.
	criSandbox bool
}

// roleOf reads the CRI annotations of container id's spec.
func roleOf(id string, spec *specs.Spec) (podRole, error) {
	a := spec.Annotations
	switch a[annotationContainerType] {
	case containerTypeContainer:
		sb := a[annotationSandboxID]
		if sb == "" {
			return podRole{}, fmt.Errorf("container %s: annotation %s is missing: %w", id, annotationSandboxID, errdefs.ErrInvalidArgument)
		}
		return podRole{sandboxID: sb, joins: true}, nil
	case containerTypeSandbox:
		if sb := a[annotationSandboxID]; sb != "" && sb != id {
			return podRole{}, fmt.Errorf("sandbox container %s: annotation %s names %s: %w", id, annotationSandboxID, sb, errdefs.ErrInvalidArgument)
		}
		return podRole{sandboxID: id, criSandbox: true}, nil
	}
	return podRole{sandboxID: id}, nil
}

// procNamespace is the name of each namespace type under /proc/<pid>/ns.
var procNamespace = map[specs.LinuxNamespaceType]string{
	specs.PIDNamespace:    "pid",
	specs.IPCNamespace:    "ipc",
	specs.UTSNamespace:    "uts",
	specs.MountNamespace:  "mnt",
	specs.UserNamespace:   "user",
	specs.CgroupNamespace: "cgroup",
	specs.TimeNamespace:   "time",
}

// guestNamespaces rewrites the spec's namespaces for the guest.
//
// The network namespace is dropped: the VM is the pod's network namespace
// (the agent configured the guest's own interfaces), so every container
// of the pod shares the guest's. A path of another namespace is, as CRI
// writes it, /proc/<pid>/ns/<type> with the pid of the sandbox container
// (or, for a container joining another's PID namespace, of that one): the
// pid this shim reported, which is the process's pid in the guest, where
// the agent runs in the root PID namespace. Such a path is therefore
// already right in the guest; it is accepted only when the pid is one of
// this shim's containers (guestPid says which), since a host path means
// nothing in the VM.
func guestNamespaces(id string, spec *specs.Spec, guestPid func(uint32) bool) error {
	if spec.Linux == nil {
		return nil
	}
	out := spec.Linux.Namespaces[:0]
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			continue
		}
		if ns.Path != "" {
			name, ok := procNamespace[ns.Type]
			if !ok {
				return fmt.Errorf("container %s: namespace type %q: %w", id, ns.Type, errdefs.ErrInvalidArgument)
			}
			pid, ok := procNamespacePid(ns.Path, name)
			if !ok || !guestPid(pid) {
				return fmt.Errorf("container %s: cannot join %s namespace %s in the VM: only namespaces of the pod's containers (/proc/<pid>/ns/%s) can be joined: %w",
					id, ns.Type, ns.Path, name, errdefs.ErrInvalidArgument)
			}
			ns.Path = fmt.Sprintf("/proc/%d/ns/%s", pid, name)
		}
		out = append(out, ns)
	}
	spec.Linux.Namespaces = out
	return nil
}

// procNamespacePid returns pid when p is /proc/<pid>/ns/<name>.
func procNamespacePid(p, name string) (uint32, bool) {
	parts := strings.Split(path.Clean(p), "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "proc" || parts[3] != "ns" || parts[4] != name {
		return 0, false
	}
	pid, err := strconv.ParseUint(parts[2], 10, 32)
	return uint32(pid), err == nil && pid > 0
}
