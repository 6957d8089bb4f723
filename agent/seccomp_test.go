package agent

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestContainerConfigSeccomp(t *testing.T) {
	b := exampleSpec(t, func(s *specs.Spec) {
		s.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction: specs.ActErrno,
			Architectures: []specs.Arch{specs.ArchX86_64},
			Syscalls: []specs.LinuxSyscall{
				{Names: []string{"read", "write"}, Action: specs.ActAllow},
				// runc skips names libseccomp does not know when it loads
				// the filter, so a profile for a newer kernel is accepted.
				{Names: []string{"vmpod_no_such_syscall"}, Action: specs.ActAllow},
			},
		}
	})
	cfg, _, err := ContainerConfig("c1", b, "/r", false)
	if err != nil {
		t.Fatal(err)
	}
	sc := cfg.Seccomp
	if sc == nil {
		t.Fatal("linux.seccomp did not reach the libcontainer config")
	}
	if sc.DefaultAction != configs.Errno || len(sc.Architectures) != 1 || sc.Architectures[0] != "amd64" {
		t.Errorf("default action %v, architectures %v; want errno, [amd64]", sc.DefaultAction, sc.Architectures)
	}
	var names []string
	for _, c := range sc.Syscalls {
		if c.Action != configs.Allow {
			t.Errorf("syscall %s: action %v, want allow", c.Name, c.Action)
		}
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "read,write,vmpod_no_such_syscall" {
		t.Errorf("syscalls %v", names)
	}

	// An empty profile means no filter, as in runc.
	b = exampleSpec(t, func(s *specs.Spec) { s.Linux.Seccomp = &specs.LinuxSeccomp{} })
	if cfg, _, err = ContainerConfig("c1", b, "/r", false); err != nil || cfg.Seccomp != nil {
		t.Errorf("empty profile: seccomp %v, %v; want none", cfg.Seccomp, err)
	}
}

func TestContainerConfigSeccompRejects(t *testing.T) {
	for _, c := range []struct {
		name, want string
		edit       func(*specs.LinuxSeccomp)
	}{
		{"unknown default action", "SCMP_ACT_X", func(s *specs.LinuxSeccomp) { s.DefaultAction = "SCMP_ACT_X" }},
		{"unknown action", "SCMP_ACT_Y", func(s *specs.LinuxSeccomp) { s.Syscalls[0].Action = "SCMP_ACT_Y" }},
		{"unknown arch", "SCMP_ARCH_VAX", func(s *specs.LinuxSeccomp) { s.Architectures = []specs.Arch{"SCMP_ARCH_VAX"} }},
		{"unknown operator", "SCMP_CMP_ZZ", func(s *specs.LinuxSeccomp) { s.Syscalls[0].Args = []specs.LinuxSeccompArg{{Op: "SCMP_CMP_ZZ"}} }},
		{"listener path", "listenerPath", func(s *specs.LinuxSeccomp) { s.ListenerPath = "/run/agent.sock" }},
		{"notify default", "defaultAction SCMP_ACT_NOTIFY", func(s *specs.LinuxSeccomp) { s.DefaultAction = specs.ActNotify }},
		{"notify syscall", "syscalls[0]: action SCMP_ACT_NOTIFY", func(s *specs.LinuxSeccomp) { s.Syscalls[0].Action = specs.ActNotify }},
	} {
		b := exampleSpec(t, func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{
				DefaultAction: specs.ActAllow,
				Syscalls:      []specs.LinuxSyscall{{Names: []string{"mkdir"}, Action: specs.ActErrno}},
			}
			c.edit(s.Linux.Seccomp)
		})
		_, _, err := ContainerConfig("c1", b, "/r", false)
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: got %v, want invalid argument", c.name, err)
			continue
		}
		if !strings.Contains(err.Error(), "container c1") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not name container c1 and %q", c.name, err, c.want)
		}
	}
}

func TestCheckSeccompSupport(t *testing.T) {
	if err := checkSeccompSupport(&configs.Config{}); err != nil {
		t.Errorf("no profile: %v", err)
	}
	err := checkSeccompSupport(&configs.Config{Seccomp: &configs.Seccomp{}})
	if seccomp.Enabled && err != nil {
		t.Errorf("built with seccomp: %v", err)
	}
	// Tests run without the build tag unless given -tags seccomp: the
	// refusal must then be explicit, not a failure inside runc init.
	if !seccomp.Enabled && !errdefs.IsNotImplemented(err) {
		t.Errorf("built without seccomp: got %v, want not implemented", err)
	}
}
