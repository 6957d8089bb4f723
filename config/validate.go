package config

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// raw mirrors Config as it is written in a file. Numbers are int64 so that
// a negative value reaches validation and gets a message of its own instead
// of the decoder's "out of range for uint32".
type raw struct {
	Hypervisor struct {
		QEMU rawQEMU `toml:"qemu"`
		CLH  rawCLH  `toml:"clh"`
		Type string  `toml:"type"`
	} `toml:"hypervisor"`
	Agent   Agent   `toml:"agent"`
	Runtime Runtime `toml:"runtime"`
}

type rawQEMU struct {
	Path          string   `toml:"path"`
	Kernel        string   `toml:"kernel"`
	Initrd        string   `toml:"initrd"`
	MachineType   string   `toml:"machine_type"`
	Accel         string   `toml:"accel"`
	KernelParams  []string `toml:"kernel_params"`
	DefaultVCPUs  int64    `toml:"default_vcpus"`
	DefaultMemory int64    `toml:"default_memory"`
	SharedFS      string   `toml:"shared_fs"`
	VirtiofsdPath string   `toml:"virtiofsd_path"`
	VsockMode     string   `toml:"vsock_mode"`
	Jail          bool     `toml:"jail"`
	JailUIDStart  int64    `toml:"jail_uid_start"`
	JailUIDCount  int64    `toml:"jail_uid_count"`
	// EnableAnnotations: see QEMU.
	EnableAnnotations []string `toml:"enable_annotations"`
	MaxVCPUs          int64    `toml:"max_vcpus"`
	MaxMemory         int64    `toml:"max_memory"`
	FreePageReporting bool     `toml:"free_page_reporting"`
	TCGTBSize         int64    `toml:"tcg_tb_size"`
}

type rawCLH struct {
	Path          string   `toml:"path"`
	Kernel        string   `toml:"kernel"`
	Initrd        string   `toml:"initrd"`
	KernelParams  []string `toml:"kernel_params"`
	DefaultVCPUs  int64    `toml:"default_vcpus"`
	DefaultMemory int64    `toml:"default_memory"`
	VirtiofsdPath string   `toml:"virtiofsd_path"`
	Jail          bool     `toml:"jail"`
	JailUIDStart  int64    `toml:"jail_uid_start"`
	JailUIDCount  int64    `toml:"jail_uid_count"`
}

// Allowed values of the enumerated keys.
var (
	HypervisorTypes = []string{TypeQEMU, TypeCLH}
	MachineTypes    = []string{"q35", "microvm"}
	Accels          = []string{"auto", "kvm", "tcg"}
	SharedFSTypes   = []string{"virtio-fs"}
	VsockModes      = []string{"auto", "vhost", "vhost-user"}
	NetworkModels   = []string{"tcfilter", "none"}
	// ResourceManagements are the values of [runtime] resource_management.
	ResourceManagements = []string{ResourceStatic, ResourceHotplug, ResourceBoth}
)

// validator collects the first error, naming the key and the file the
// value came from.
type validator struct {
	from func(key string) string
	err  error
}

func (v *validator) failf(key, format string, args ...any) {
	if v.err == nil {
		v.err = fmt.Errorf("config: %s in %s: %s", key, v.from(key), fmt.Sprintf(format, args...))
	}
}

func (v *validator) oneOf(key, val string, allowed []string) {
	if !slices.Contains(allowed, val) {
		v.failf(key, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

func (v *validator) nonEmpty(key, val string) {
	if strings.TrimSpace(val) == "" {
		v.failf(key, "must not be empty")
	} else if strings.ContainsAny(val, "\x00\n") {
		v.failf(key, "%q contains a NUL or newline", val)
	}
}

// file checks an optional file: "" or an absolute path, since a relative
// one would depend on the shim's working directory (the bundle).
func (v *validator) file(key, val string) {
	if val == "" {
		return
	}
	v.nonEmpty(key, val)
	if !filepath.IsAbs(val) {
		v.failf(key, "%q is not an absolute path", val)
	}
}

// program checks a binary: an absolute path, or a bare name for PATH.
func (v *validator) program(key, val string) {
	v.nonEmpty(key, val)
	if strings.Contains(val, "/") && !filepath.IsAbs(val) {
		v.failf(key, "%q is neither an absolute path nor a name to look up on PATH", val)
	}
}

func (v *validator) intRange(key string, val, lo, hi int64) {
	switch {
	case val < 0:
		v.failf(key, "%d is negative", val)
	case val < lo || val > hi:
		v.failf(key, "%d is outside %d..%d", val, lo, hi)
	}
}

// validate checks every value of r and converts it to a Config.
func (r *raw) validate(from func(key string) string) (*Config, error) {
	v := &validator{from: from}
	q := &r.Hypervisor.QEMU
	const s = "hypervisor.qemu."
	v.program(s+"path", q.Path)
	v.file(s+"kernel", q.Kernel)
	v.file(s+"initrd", q.Initrd)
	v.oneOf(s+"machine_type", q.MachineType, MachineTypes)
	v.oneOf(s+"accel", q.Accel, Accels)
	for i, p := range q.KernelParams {
		if strings.TrimSpace(p) == "" || strings.ContainsAny(p, "\x00\n") {
			v.failf(s+"kernel_params", "entry %d (%q) is empty or contains a NUL or newline", i, p)
		}
	}
	v.intRange(s+"default_vcpus", q.DefaultVCPUs, 1, MaxVCPUs)
	v.intRange(s+"default_memory", q.DefaultMemory, MinMemoryMiB, MaxMemoryMiB)
	v.oneOf(s+"shared_fs", q.SharedFS, SharedFSTypes)
	v.program(s+"virtiofsd_path", q.VirtiofsdPath)
	v.oneOf(s+"vsock_mode", q.VsockMode, VsockModes)
	v.intRange(s+"jail_uid_start", q.JailUIDStart, 1, MaxJailUIDEnd-1)
	v.intRange(s+"jail_uid_count", q.JailUIDCount, 1, MaxJailUIDEnd-1)
	if end := q.JailUIDStart + q.JailUIDCount; v.err == nil && end > MaxJailUIDEnd {
		v.failf(s+"jail_uid_count", "jail_uid_start %d + jail_uid_count %d = %d passes %d, which is not a uid", q.JailUIDStart, q.JailUIDCount, end, int64(MaxJailUIDEnd))
	}
	for i, a := range q.EnableAnnotations {
		if strings.TrimSpace(a) == "" {
			v.failf(s+"enable_annotations", "entry %d is empty (it would allow every annotation; write \".*\" for that)", i)
		} else if _, err := regexp.Compile(a); err != nil {
			v.failf(s+"enable_annotations", "entry %d (%q) is not a regular expression: %v", i, a, err)
		}
	}
	c := &r.Hypervisor.CLH
	const cs = "hypervisor.clh."
	v.program(cs+"path", c.Path)
	v.file(cs+"kernel", c.Kernel)
	v.file(cs+"initrd", c.Initrd)
	for i, p := range c.KernelParams {
		if strings.TrimSpace(p) == "" || strings.ContainsAny(p, "\x00\n") {
			v.failf(cs+"kernel_params", "entry %d (%q) is empty or contains a NUL or newline", i, p)
		}
	}
	v.intRange(cs+"default_vcpus", c.DefaultVCPUs, 1, MaxVCPUs)
	v.intRange(cs+"default_memory", c.DefaultMemory, MinMemoryMiB, MaxMemoryMiB)
	v.program(cs+"virtiofsd_path", c.VirtiofsdPath)
	v.intRange(cs+"jail_uid_start", c.JailUIDStart, 1, MaxJailUIDEnd-1)
	v.intRange(cs+"jail_uid_count", c.JailUIDCount, 1, MaxJailUIDEnd-1)
	if end := c.JailUIDStart + c.JailUIDCount; v.err == nil && end > MaxJailUIDEnd {
		v.failf(cs+"jail_uid_count", "jail_uid_start %d + jail_uid_count %d = %d passes %d, which is not a uid", c.JailUIDStart, c.JailUIDCount, end, int64(MaxJailUIDEnd))
	}
	v.oneOf("hypervisor.type", r.Hypervisor.Type, HypervisorTypes)
	v.intRange(s+"max_vcpus", q.MaxVCPUs, 0, MaxVCPUs)
	if v.err == nil && q.MaxVCPUs != 0 && q.MaxVCPUs < q.DefaultVCPUs {
		v.failf(s+"max_vcpus", "%d is below default_vcpus %d (0 means the host's CPUs)", q.MaxVCPUs, q.DefaultVCPUs)
	}
	v.intRange(s+"max_memory", q.MaxMemory, MinMemoryMiB, MaxMemoryMiB)
	if v.err == nil && q.MaxMemory < q.DefaultMemory {
		// A file that raises default_memory alone keeps working, with no
		// room for memory hot-plug; one that sets both wrongly is told.
		if from(s+"max_memory") == DefaultSource {
			q.MaxMemory = q.DefaultMemory
		} else {
			v.failf(s+"max_memory", "%d MiB is below default_memory %d MiB", q.MaxMemory, q.DefaultMemory)
		}
	}
	v.intRange(s+"tcg_tb_size", q.TCGTBSize, 0, MaxTCGTBSizeMiB)
	if d := r.Agent.DialTimeout.Duration; d <= 0 || d > MaxDialTimeout {
		v.failf("agent.dial_timeout", "%s is not more than 0 and at most %s", d, MaxDialTimeout)
	}
	for _, h := range []struct {
		key string
		d   Duration
	}{
		{"agent.health_check_interval", r.Agent.HealthCheckInterval},
		{"agent.health_check_timeout", r.Agent.HealthCheckTimeout},
	} {
		if h.d.Duration <= 0 || h.d.Duration > MaxDialTimeout {
			v.failf(h.key, "%s is not more than 0 and at most %s", h.d.Duration, MaxDialTimeout)
		}
	}
	v.oneOf("runtime.network_model", r.Runtime.NetworkModel, NetworkModels)
	v.oneOf("runtime.resource_management", r.Runtime.ResourceManagement, ResourceManagements)
	if v.err != nil {
		return nil, v.err
	}
	return &Config{
		Hypervisor: Hypervisor{QEMU: QEMU{
			Path:          q.Path,
			Kernel:        q.Kernel,
			Initrd:        q.Initrd,
			MachineType:   q.MachineType,
			Accel:         q.Accel,
			KernelParams:  slices.Clone(q.KernelParams),
			DefaultVCPUs:  uint32(q.DefaultVCPUs),
			DefaultMemory: uint32(q.DefaultMemory),
			SharedFS:      q.SharedFS,
			VirtiofsdPath: q.VirtiofsdPath,
			VsockMode:     q.VsockMode,
			Jail:          q.Jail,
			JailUIDStart:  uint32(q.JailUIDStart),
			JailUIDCount:  uint32(q.JailUIDCount),

			EnableAnnotations: slices.Clone(q.EnableAnnotations),
			MaxVCPUs:          uint32(q.MaxVCPUs),
			MaxMemory:         uint32(q.MaxMemory),
			FreePageReporting: q.FreePageReporting,
			TCGTBSize:         uint32(q.TCGTBSize),
		},
			CLH: CLH{
				Path:          c.Path,
				Kernel:        c.Kernel,
				Initrd:        c.Initrd,
				KernelParams:  slices.Clone(c.KernelParams),
				DefaultVCPUs:  uint32(c.DefaultVCPUs),
				DefaultMemory: uint32(c.DefaultMemory),
				VirtiofsdPath: c.VirtiofsdPath,
				Jail:          c.Jail,
				JailUIDStart:  uint32(c.JailUIDStart),
				JailUIDCount:  uint32(c.JailUIDCount),
			},
			Type: r.Hypervisor.Type,
		},
		Agent:   r.Agent,
		Runtime: r.Runtime,
	}, nil
}
