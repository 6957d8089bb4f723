package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// DefaultCgroupParent is where containers without linux.cgroupsPath go.
const DefaultCgroupParent = "/vmpod"

// decodeJSON unmarshals a bounded JSON document into v.
func decodeJSON(what string, b []byte, v any) error {
	if len(b) == 0 {
		return fmt.Errorf("%s: empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if len(b) > MaxSpecSize {
		return fmt.Errorf("%s: %d bytes, more than %d: %w", what, len(b), MaxSpecSize, errdefs.ErrInvalidArgument)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: invalid JSON: %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// DecodeSpec parses and checks an OCI runtime spec as CreateContainer
// receives it.
func DecodeSpec(b []byte) (*specs.Spec, error) {
	var spec specs.Spec
	if err := decodeJSON("spec", b, &spec); err != nil {
		return nil, err
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("spec: no process: %w", errdefs.ErrInvalidArgument)
	}
	if err := validateProcess(spec.Process); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	return &spec, nil
}

// DecodeProcess parses and checks an OCI process spec as ExecProcess
// receives it.
func DecodeProcess(b []byte) (*specs.Process, error) {
	var p specs.Process
	if err := decodeJSON("process", b, &p); err != nil {
		return nil, err
	}
	if err := validateProcess(&p); err != nil {
		return nil, err
	}
	return &p, nil
}

// validateProcess applies the checks runc makes before starting a process.
func validateProcess(p *specs.Process) error {
	if len(p.Args) == 0 {
		return fmt.Errorf("process: no args: %w", errdefs.ErrInvalidArgument)
	}
	if p.Cwd == "" || !path.IsAbs(p.Cwd) {
		return fmt.Errorf("process: cwd %q is not an absolute path: %w", p.Cwd, errdefs.ErrInvalidArgument)
	}
	for _, rl := range p.Rlimits {
		if _, ok := rlimits[rl.Type]; !ok {
			return fmt.Errorf("process: unknown rlimit %q: %w", rl.Type, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// ContainerConfig turns spec JSON into the libcontainer configuration of
// container id, with its root file system at rootfs. noPivotRoot makes the
// container enter its root with MS_MOVE and chroot instead of pivot_root,
// which fails when the agent's own root is the initramfs. It is the single
// entry point from untrusted spec bytes to libcontainer, so it is fuzzed.
func ContainerConfig(id string, specJSON []byte, rootfs string, noPivotRoot bool) (*configs.Config, *specs.Spec, error) {
	if err := validateID("container id", id); err != nil {
		return nil, nil, err
	}
	if err := validateGuestPath("rootfs path", rootfs); err != nil {
		return nil, nil, err
	}
	spec, err := DecodeSpec(specJSON)
	if err != nil {
		return nil, nil, err
	}
	readonly := spec.Root != nil && spec.Root.Readonly
	spec.Root = &specs.Root{Path: rootfs, Readonly: readonly}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	// A relative path, or the host's systemd form "slice:prefix:name",
	// means nothing in the guest, whose cgroups are the agent's alone:
	// such containers go to the default place.
	if !path.IsAbs(spec.Linux.CgroupsPath) {
		spec.Linux.CgroupsPath = path.Join(DefaultCgroupParent, id)
	}
	if err := validateSeccomp(spec.Linux.Seccomp); err != nil {
		return nil, nil, fmt.Errorf("spec of container %s: %w", id, err)
	}
	if err := validateSysctls(spec.Linux.Sysctl); err != nil {
		return nil, nil, fmt.Errorf("spec of container %s: %w", id, err)
	}
	sysfsForUserNamespace(spec)
	cfg, err := convertSpec(id, spec, noPivotRoot)
	if err != nil {
		return nil, nil, fmt.Errorf("spec of container %s: %v: %w", id, err, errdefs.ErrInvalidArgument)
	}
	return cfg, spec, nil
}

// convertSpec calls specconv, turning a panic on a malformed spec into an
// error: the agent must survive any spec the host sends.
func convertSpec(id string, spec *specs.Spec, noPivotRoot bool) (cfg *configs.Config, err error) {
	defer func() {
		if r := recover(); r != nil {
			cfg, err = nil, fmt.Errorf("spec conversion panicked: %v", r)
		}
	}()
	return specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:  id,
		Spec:        spec,
		NoPivotRoot: noPivotRoot,
	})
}

var rlimits = map[string]int{
	"RLIMIT_CPU":        unix.RLIMIT_CPU,
	"RLIMIT_FSIZE":      unix.RLIMIT_FSIZE,
	"RLIMIT_DATA":       unix.RLIMIT_DATA,
	"RLIMIT_STACK":      unix.RLIMIT_STACK,
	"RLIMIT_CORE":       unix.RLIMIT_CORE,
	"RLIMIT_RSS":        unix.RLIMIT_RSS,
	"RLIMIT_NPROC":      unix.RLIMIT_NPROC,
	"RLIMIT_NOFILE":     unix.RLIMIT_NOFILE,
	"RLIMIT_MEMLOCK":    unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS":         unix.RLIMIT_AS,
	"RLIMIT_LOCKS":      unix.RLIMIT_LOCKS,
	"RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE":   unix.RLIMIT_MSGQUEUE,
	"RLIMIT_NICE":       unix.RLIMIT_NICE,
	"RLIMIT_RTPRIO":     unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME":     unix.RLIMIT_RTTIME,
}

// newProcess converts an OCI process into a libcontainer process the way
// runc's newProcess does (utils_linux.go).
func newProcess(p *specs.Process) (*libcontainer.Process, error) {
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		Label:           p.SelinuxLabel,
		NoNewPrivileges: &p.NoNewPrivileges,
		AppArmorProfile: p.ApparmorProfile,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
	}
	if p.ConsoleSize != nil {
		lp.ConsoleWidth = uint16(p.ConsoleSize.Width)
		lp.ConsoleHeight = uint16(p.ConsoleSize.Height)
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding:    c.Bounding,
			Effective:   c.Effective,
			Inheritable: c.Inheritable,
			Permitted:   c.Permitted,
			Ambient:     c.Ambient,
		}
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	for _, rl := range p.Rlimits {
		t, ok := rlimits[rl.Type]
		if !ok {
			return nil, fmt.Errorf("unknown rlimit %q: %w", rl.Type, errdefs.ErrInvalidArgument)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: rl.Hard, Soft: rl.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, fmt.Errorf("execCPUAffinity: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	lp.CPUAffinity = aff
	return lp, nil
}

// DecodeResources parses the OCI LinuxResources of UpdateContainer.
func DecodeResources(b []byte) (*specs.LinuxResources, error) {
	var r specs.LinuxResources
	if err := decodeJSON("resources", b, &r); err != nil {
		return nil, err
	}
	if len(r.Devices) > 0 {
		return nil, fmt.Errorf("resources: devices cannot be updated: %w", errdefs.ErrInvalidArgument)
	}
	return &r, nil
}

// applyResources overlays the set fields of r on res, as runc update does.
func applyResources(res *cgroups.Resources, r *specs.LinuxResources) {
	if m := r.Memory; m != nil {
		if m.Limit != nil {
			res.Memory = *m.Limit
		}
		if m.Reservation != nil {
			res.MemoryReservation = *m.Reservation
		}
		if m.Swap != nil {
			res.MemorySwap = *m.Swap
		}
	}
	if c := r.CPU; c != nil {
		if c.Shares != nil {
			res.CpuShares = *c.Shares
			res.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*c.Shares)
		}
		if c.Quota != nil {
			res.CpuQuota = *c.Quota
		}
		if c.Period != nil {
			res.CpuPeriod = *c.Period
		}
		if c.RealtimePeriod != nil {
			res.CpuRtPeriod = *c.RealtimePeriod
		}
		if c.RealtimeRuntime != nil {
			res.CpuRtRuntime = *c.RealtimeRuntime
		}
		if c.Cpus != "" {
			res.CpusetCpus = c.Cpus
		}
		if c.Mems != "" {
			res.CpusetMems = c.Mems
		}
	}
	if r.Pids != nil && r.Pids.Limit != nil {
		limit := *r.Pids.Limit
		res.PidsLimit = &limit
	}
	if r.BlockIO != nil && r.BlockIO.Weight != nil {
		res.BlkioWeight = *r.BlockIO.Weight
	}
	if r.Unified != nil {
		res.Unified = r.Unified
	}
}

// errNotRunning reports whether err is libcontainer's "not running".
func errNotRunning(err error) bool {
	return errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, libcontainer.ErrNotPaused) || errors.Is(err, libcontainer.ErrPaused)
}
