package agent

import (
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Seccomp profiles (linux.seccomp) are converted by specconv and applied by
// libcontainer in the container's init, in the guest, as runc does on a
// host. Unknown syscall names are skipped, as runc skips them (a profile
// written for a newer kernel still loads); unknown actions, architectures,
// operators and flags are specconv's errors. One thing runc can do has no
// meaning in a VM and is refused up front rather than failing inside the
// container's init: a seccomp notify agent. listenerPath names a Unix socket
// on the host, which the guest cannot reach, and SCMP_ACT_NOTIFY without
// one makes libcontainer fail after the filter is loaded.

// validateSeccomp checks the parts of a seccomp profile the guest cannot
// honour. A nil profile is valid.
func validateSeccomp(s *specs.LinuxSeccomp) error {
	if s == nil {
		return nil
	}
	if s.ListenerPath != "" {
		return fmt.Errorf("seccomp: listenerPath %.256q: a seccomp notify agent outside the VM cannot receive the guest's listener: %w", s.ListenerPath, errdefs.ErrInvalidArgument)
	}
	if s.DefaultAction == specs.ActNotify {
		return fmt.Errorf("seccomp: defaultAction %s needs a seccomp notify agent, which the guest does not have: %w", s.DefaultAction, errdefs.ErrInvalidArgument)
	}
	for i, sc := range s.Syscalls {
		if sc.Action == specs.ActNotify {
			return fmt.Errorf("seccomp: syscalls[%d]: action %s needs a seccomp notify agent, which the guest does not have: %w", i, sc.Action, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// checkSeccompSupport refuses a seccomp profile when the agent was built
// without libseccomp (the "seccomp" build tag): libcontainer would accept
// the configuration and fail only inside the container's init.
func checkSeccompSupport(cfg *configs.Config) error {
	if cfg.Seccomp != nil && !seccomp.Enabled {
		return fmt.Errorf("seccomp profile given, but this agent was built without seccomp support (build tag \"seccomp\"): %w", errdefs.ErrNotImplemented)
	}
	return nil
}
