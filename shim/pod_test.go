package shim

import (
	"errors"
	"testing"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRoleOf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		want    podRole
		wantErr bool
	}{
		{"ctr", nil, podRole{sandboxID: "c1"}, false},
		{"sandbox", map[string]string{annotationContainerType: "sandbox", annotationSandboxID: "c1"}, podRole{sandboxID: "c1", criSandbox: true}, false},
		{"container", map[string]string{annotationContainerType: "container", annotationSandboxID: "pod"}, podRole{sandboxID: "pod", joins: true}, false},
		{"container without pod", map[string]string{annotationContainerType: "container"}, podRole{}, true},
		{"sandbox naming another", map[string]string{annotationContainerType: "sandbox", annotationSandboxID: "pod"}, podRole{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := roleOf("c1", &specs.Spec{Annotations: tc.ann})
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("roleOf = %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not InvalidArgument", err)
			}
		})
	}
}

// TestGuestNamespaces: the network namespace goes (the VM is the pod's),
// paths of the pod's containers' namespaces stay, anything else is refused.
func TestGuestNamespaces(t *testing.T) {
	known := func(pid uint32) bool { return pid == 42 }
	spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.NetworkNamespace, Path: "/proc/42/ns/net"},
		{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/42/ns/uts/"},
		{Type: specs.PIDNamespace, Path: "/proc/42/ns/pid"},
		{Type: specs.MountNamespace},
	}}}
	if err := guestNamespaces("c1", spec, known); err != nil {
		t.Fatal(err)
	}
	want := []specs.LinuxNamespace{
		{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/42/ns/uts"},
		{Type: specs.PIDNamespace, Path: "/proc/42/ns/pid"},
		{Type: specs.MountNamespace},
	}
	if len(spec.Linux.Namespaces) != len(want) {
		t.Fatalf("namespaces %+v, want %+v", spec.Linux.Namespaces, want)
	}
	for i := range want {
		if spec.Linux.Namespaces[i] != want[i] {
			t.Errorf("namespace %d = %+v, want %+v", i, spec.Linux.Namespaces[i], want[i])
		}
	}

	sandbox := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.PIDNamespace},
	}}}
	if err := guestNamespaces("pod", sandbox, known); err != nil || len(sandbox.Linux.Namespaces) != 1 {
		t.Errorf("sandbox spec: %v, namespaces %+v", err, sandbox.Linux.Namespaces)
	}

	for _, bad := range []specs.LinuxNamespace{
		{Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc"},
		{Type: specs.IPCNamespace, Path: "/proc/42/ns/uts"},
		{Type: specs.UTSNamespace, Path: "/run/uts-ns"},
		{Type: specs.PIDNamespace, Path: "/proc/0/ns/pid"},
		{Type: "bogus", Path: "/proc/42/ns/bogus"},
	} {
		s := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{bad}}}
		if err := guestNamespaces("c1", s, known); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v: error %v, want InvalidArgument", bad, err)
		}
	}
}
