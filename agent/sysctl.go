package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// Bounds on a spec's sysctls.
const (
	// maxSysctls bounds the sysctls of one container.
	maxSysctls = 256
	// maxSysctlName bounds a sysctl's name.
	maxSysctlName = 256
	// maxSysctlValue bounds a sysctl's value: the kernel reads at most a
	// page from one write to /proc/sys.
	maxSysctlValue = 4096
)

// guestProcSys is where the guest's sysctls are.
const guestProcSys = "/proc/sys"

// sysctlPath returns the path below /proc/sys that names the sysctl name
// as sysctl(8) reads it: dots separate the levels, and when the first
// separator is a slash, slashes do and dots are part of a level's name
// (net/ipv4/conf/eth0.100/rp_filter), while in the dotted form a slash
// stands for such a dot (net.ipv4.conf.eth0/100.rp_filter). Every level
// must be a plain name: no "." or "..", no empty level, nothing but
// letters, digits and "_-.:@+", so that the path stays below /proc/sys.
func sysctlPath(name string) (string, error) {
	if name == "" || len(name) > maxSysctlName {
		return "", fmt.Errorf("sysctl %q: name empty or longer than %d bytes: %w", name, maxSysctlName, errdefs.ErrInvalidArgument)
	}
	p := name
	if i := strings.IndexAny(name, "./"); i >= 0 && name[i] == '.' {
		p = strings.Map(func(r rune) rune {
			switch r {
			case '.':
				return '/'
			case '/':
				return '.'
			}
			return r
		}, name)
	}
	for _, level := range strings.Split(p, "/") {
		if level == "" || level == "." || level == ".." {
			return "", fmt.Errorf("sysctl %q: level %q is not a name: %w", name, level, errdefs.ErrInvalidArgument)
		}
		for _, r := range level {
			if !sysctlNameRune(r) {
				return "", fmt.Errorf("sysctl %q: character %q is not allowed: %w", name, r, errdefs.ErrInvalidArgument)
			}
		}
	}
	return p, nil
}

func sysctlNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.:@+", r)
}

// validateSysctls checks every name and value of a spec's sysctls; errors
// name the sysctl.
func validateSysctls(sysctls map[string]string) error {
	if len(sysctls) > maxSysctls {
		return fmt.Errorf("%d sysctls, more than %d: %w", len(sysctls), maxSysctls, errdefs.ErrInvalidArgument)
	}
	for name, value := range sysctls {
		if _, err := sysctlPath(name); err != nil {
			return err
		}
		if len(value) > maxSysctlValue {
			return fmt.Errorf("sysctl %q: value longer than %d bytes: %w", name, maxSysctlValue, errdefs.ErrInvalidArgument)
		}
		for _, r := range value {
			if r < ' ' && r != '\t' || r == 0x7f {
				return fmt.Errorf("sysctl %q: value %q has a control character: %w", name, value, errdefs.ErrInvalidArgument)
			}
		}
	}
	return nil
}

// isNetSysctl reports whether a valid sysctl name is below net.
func isNetSysctl(name string) bool {
	p, err := sysctlPath(name)
	return err == nil && strings.HasPrefix(p, "net/")
}

// podSysctls removes the net.* sysctls from the config of a container that
// shares the agent's network namespace, and returns them. That namespace is
// the pod's (the shim drops the spec's network namespace: the VM is the
// pod's network), and libcontainer refuses net.* sysctls in a namespace it
// did not create; the agent sets them there itself. A container with a
// network namespace of its own keeps them for libcontainer.
func podSysctls(cfg *configs.Config) map[string]string {
	if cfg.Namespaces.Contains(configs.NEWNET) {
		return nil
	}
	var out map[string]string
	for name, value := range cfg.Sysctl {
		if !isNetSysctl(name) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = value
		delete(cfg.Sysctl, name)
	}
	return out
}

// podSysctl is a net.* sysctl the agent set in the pod's network namespace.
type podSysctl struct {
	value     string
	container string // who set it
}

// applyPodSysctls sets the net.* sysctls of container id in the pod's
// network namespace, which all the pod's containers share. A later
// container's value replaces an earlier one, as with runc, where every
// container joining the pod's namespace writes its sysctls into it; the
// replacement is logged. In CRI pods only the sandbox container carries
// sysctls. Outside a guest (host tests) there is no pod namespace to set
// them in, and they are refused. s.sandboxMu must not be held.
func (s *Server) applyPodSysctls(ctx context.Context, id string, sysctls map[string]string) error {
	if len(sysctls) == 0 {
		return nil
	}
	if !s.cfg.Guest {
		return fmt.Errorf("container %s: net sysctls are set in the pod's network namespace, which exists only in a guest: %w", id, errdefs.ErrFailedPrecondition)
	}
	s.sandboxMu.Lock()
	defer s.sandboxMu.Unlock()
	if s.netSysctls == nil {
		s.netSysctls = map[string]podSysctl{}
	}
	return writeSysctls(ctx, guestProcSys, id, sysctls, s.netSysctls)
}

// writeSysctls writes sysctls below root (/proc/sys), in name order, and
// records them in set; errors name the container and the sysctl.
func writeSysctls(ctx context.Context, root, id string, sysctls map[string]string, set map[string]podSysctl) error {
	names := make([]string, 0, len(sysctls))
	for name := range sysctls {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := sysctls[name]
		p, err := sysctlPath(name)
		if err != nil {
			return fmt.Errorf("container %s: %w", id, err)
		}
		if prev, ok := set[p]; ok && prev.value != value && prev.container != id {
			log.G(ctx).WithFields(log.Fields{"sysctl": name, "value": value, "previous": prev.value, "set_by": prev.container}).
				Warn("net sysctl of the pod's network namespace replaced")
		}
		if err := writeSysctl(filepath.Join(root, p), value); err != nil {
			return fmt.Errorf("container %s: sysctl %q = %q: %w", id, name, value, err)
		}
		set[p] = podSysctl{value: value, container: id}
	}
	return nil
}

// writeSysctl writes value to the existing file f, not following links.
func writeSysctl(f, value string) error {
	fd, err := os.OpenFile(f, os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no such sysctl in the guest kernel: %w", errdefs.ErrInvalidArgument)
		}
		return err
	}
	_, err = fd.WriteString(value)
	if cerr := fd.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ERANGE) {
		return fmt.Errorf("value refused by the kernel: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return err
}
