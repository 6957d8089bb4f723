// Package config loads vmpod's configuration: the defaults embedded from the
// repository's configuration.toml, overridden key by key by one file.
//
// Loading is strict, because a typo in a runtime's configuration should stop
// the pod with a clear message rather than be silently ignored: an unknown
// key, a value of the wrong type or an impossible value is an error that
// names the key and the file it came from.
package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/vmpod/vmpod"
)

// EnvConfig names the environment variable that points at a configuration
// file when containerd passes no ConfigPath.
const EnvConfig = "VMPOD_CONFIG"

// DefaultSource is Config.Source when no file overrides the defaults.
const DefaultSource = "embedded default"

// SystemPath is the host-wide configuration file, used when neither
// ConfigPath nor $VMPOD_CONFIG names one. It is a variable for tests.
var SystemPath = "/etc/vmpod/configuration.toml"

// Limits on values; anything outside is refused rather than handed to QEMU.
const (
	MaxVCPUs       = 256
	MinMemoryMiB   = 64
	MaxMemoryMiB   = 256 * 1024
	MaxDialTimeout = 10 * time.Minute
	// MaxTCGTBSizeMiB bounds tcg_tb_size (QEMU's own limit is about 2 GiB).
	MaxTCGTBSizeMiB = 2048
	// MaxJailUIDEnd bounds jail_uid_start + jail_uid_count: (uid_t)-1 is
	// not a uid.
	MaxJailUIDEnd    = 1<<32 - 1
	maxConfigFileLen = 1 << 20
)

// Config is the whole configuration. The toml tags are the file's keys.
type Config struct {
	Hypervisor Hypervisor `toml:"hypervisor"`
	Agent      Agent      `toml:"agent"`
	Runtime    Runtime    `toml:"runtime"`
	Source     string     `toml:"-"` // the file it came from, or DefaultSource
}

// Hypervisor holds one section per virtual machine monitor and which one
// runs the VMs.
type Hypervisor struct {
	QEMU QEMU `toml:"qemu"`
	CLH  CLH  `toml:"clh"`
	// Type picks the driver: TypeQEMU or TypeCLH.
	Type string `toml:"type"`
}

// Hypervisor types ([hypervisor] type).
const (
	TypeQEMU = "qemu"
	TypeCLH  = "clh"
)

// CLH is [hypervisor.clh]: Cloud Hypervisor, experimental (not run in CI
// on a real CH).
type CLH struct {
	Path          string   `toml:"path"`           // cloud-hypervisor, v40 or later
	Kernel        string   `toml:"kernel"`         // an ELF vmlinux; "" = search as for QEMU
	Initrd        string   `toml:"initrd"`         // ditto
	KernelParams  []string `toml:"kernel_params"`  // appended to vmpod's own
	DefaultVCPUs  uint32   `toml:"default_vcpus"`  // 1..MaxVCPUs
	DefaultMemory uint32   `toml:"default_memory"` // MiB, MinMemoryMiB..MaxMemoryMiB
	VirtiofsdPath string   `toml:"virtiofsd_path"` // absolute, or looked up on PATH
	// Jail runs each CH as a uid of its own from
	// [JailUIDStart, JailUIDStart+JailUIDCount) (no chroot: CH has none).
	Jail         bool   `toml:"jail"`
	JailUIDStart uint32 `toml:"jail_uid_start"`
	JailUIDCount uint32 `toml:"jail_uid_count"`
}

// Selected is the settings both drivers share, taken from the table of the
// configured type, in [hypervisor.qemu]'s shape: the shim sizes and jails
// a VM from it whichever driver runs it. For clh, the QEMU-only keys
// (machine_type, accel, shared_fs, vsock_mode) keep [hypervisor.qemu]'s
// values, which the CH driver does not read.
func (h Hypervisor) Selected() QEMU {
	if h.Type != TypeCLH {
		return h.QEMU
	}
	q := h.QEMU
	c := h.CLH
	q.Path, q.Kernel, q.Initrd, q.KernelParams = c.Path, c.Kernel, c.Initrd, c.KernelParams
	q.DefaultVCPUs, q.DefaultMemory, q.VirtiofsdPath = c.DefaultVCPUs, c.DefaultMemory, c.VirtiofsdPath
	q.Jail, q.JailUIDStart, q.JailUIDCount = c.Jail, c.JailUIDStart, c.JailUIDCount
	return q
}

// Section is the table of the configured type's keys, "hypervisor.qemu"
// or "hypervisor.clh", for messages that name a key.
func (h Hypervisor) Section() string {
	if h.Type == TypeCLH {
		return "hypervisor.clh"
	}
	return "hypervisor.qemu"
}

// QEMU is [hypervisor.qemu].
type QEMU struct {
	Path          string   `toml:"path"`           // qemu-system-x86_64
	Kernel        string   `toml:"kernel"`         // "" = search the install and dev-build paths
	Initrd        string   `toml:"initrd"`         // ditto
	MachineType   string   `toml:"machine_type"`   // q35 | microvm
	Accel         string   `toml:"accel"`          // auto | kvm | tcg
	KernelParams  []string `toml:"kernel_params"`  // appended to vmpod's own
	DefaultVCPUs  uint32   `toml:"default_vcpus"`  // 1..MaxVCPUs
	DefaultMemory uint32   `toml:"default_memory"` // MiB, MinMemoryMiB..MaxMemoryMiB
	SharedFS      string   `toml:"shared_fs"`      // virtio-fs
	VirtiofsdPath string   `toml:"virtiofsd_path"` // absolute, or looked up on PATH
	VsockMode     string   `toml:"vsock_mode"`     // auto | vhost | vhost-user
	// Jail runs each QEMU as a uid of its own from
	// [JailUIDStart, JailUIDStart+JailUIDCount), chrooted into an empty
	// directory.
	Jail         bool   `toml:"jail"`
	JailUIDStart uint32 `toml:"jail_uid_start"` // > 0
	JailUIDCount uint32 `toml:"jail_uid_count"` // > 0, start+count <= MaxJailUIDEnd
	// EnableAnnotations lists the io.katacontainers.config.hypervisor.*
	// annotations a pod may set, by name relative to that prefix; each
	// entry is a regular expression, as in Kata (see package podconfig).
	EnableAnnotations []string `toml:"enable_annotations"`
	// MaxVCPUs and MaxMemory are how far a VM may grow by hot-plug:
	// MaxVCPUs 0 means the host's CPUs (at most MaxVCPUs, the constant);
	// MaxMemory is in MiB. Neither is below its default_ key.
	MaxVCPUs  uint32 `toml:"max_vcpus"`
	MaxMemory uint32 `toml:"max_memory"`
	// FreePageReporting gives each VM a virtio-balloon with free page
	// reporting, so that memory the guest frees goes back to the host.
	FreePageReporting bool `toml:"free_page_reporting"`
	// TCGTBSize bounds QEMU's TCG translation cache, in MiB, when a VM
	// runs under TCG: 0 is QEMU's default (1 GiB).
	TCGTBSize uint32 `toml:"tcg_tb_size"`
}

// EffectiveMaxVCPUs is max_vcpus with 0 resolved to hostCPUs, capped at
// MaxVCPUs and never below default_vcpus.
func (q QEMU) EffectiveMaxVCPUs(hostCPUs int) uint32 {
	m := q.MaxVCPUs
	if m == 0 {
		m = uint32(min(max(hostCPUs, 1), MaxVCPUs))
	}
	return max(m, q.DefaultVCPUs)
}

// Agent is [agent].
type Agent struct {
	DialTimeout Duration `toml:"dial_timeout"` // e.g. "30s"
	// The shim checks the agent every HealthCheckInterval; two checks in
	// a row unanswered within HealthCheckTimeout declare the VM dead.
	HealthCheckInterval Duration `toml:"health_check_interval"`
	HealthCheckTimeout  Duration `toml:"health_check_timeout"`
	Debug               bool     `toml:"debug"` // agent logs to the shim log
}

// Runtime is [runtime].
type Runtime struct {
	Debug        bool   `toml:"debug"`         // guest console + shim debug logs in containerd's log
	NetworkModel string `toml:"network_model"` // tcfilter | none
	DebugConsole bool   `toml:"debug_console"` // allows a debug console into the guest
	// ResourceManagement says how a VM gets the pod's CPU and memory:
	// ResourceStatic, ResourceHotplug or ResourceBoth.
	ResourceManagement string `toml:"resource_management"`
	// EnableMetrics serves the sandbox's Prometheus metrics on
	// <sandbox dir>/metrics.sock.
	EnableMetrics bool `toml:"enable_metrics"`
	// EnablePprof serves the shim's net/http/pprof on
	// <sandbox dir>/pprof.sock.
	EnablePprof bool `toml:"enable_pprof"`
}

// Values of [runtime] resource_management.
const (
	// ResourceStatic sizes the VM at creation from the pod's sandbox
	// annotations (containerd 1.7+), and never changes it.
	ResourceStatic = "static"
	// ResourceHotplug starts the VM at the defaults and grows it as
	// containers are created or updated.
	ResourceHotplug = "hotplug"
	// ResourceBoth sizes at creation and grows the VM past that.
	ResourceBoth = "both"
)

// SizesAtCreation reports whether mode sizes a VM at creation from the
// pod's sandbox annotations.
func SizesAtCreation(mode string) bool {
	return mode == ResourceStatic || mode == ResourceBoth
}

// Hotplug says whether resource_management lets a running VM grow.
func (r Runtime) Hotplug() bool {
	return r.ResourceManagement == ResourceHotplug || r.ResourceManagement == ResourceBoth || r.ResourceManagement == ""
}

// Duration is a time.Duration written in a file as Go duration text ("30s").
type Duration struct {
	time.Duration
}

// UnmarshalText parses Go duration text.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes Go duration text.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// Load reads the configuration. The file is the first of: configPath
// (containerd's runtime option ConfigPath), $VMPOD_CONFIG, SystemPath; with
// none, the embedded defaults alone. A file named by configPath or
// $VMPOD_CONFIG must exist; SystemPath is optional.
func Load(configPath string) (*Config, error) {
	path, required := configPath, true
	if path == "" {
		path = os.Getenv(EnvConfig)
	}
	if path == "" {
		path, required = SystemPath, false
	}
	data, err := readFile(path)
	if err != nil {
		if !required && errors.Is(err, os.ErrNotExist) {
			return parse(nil, "")
		}
		return nil, err
	}
	return parse(data, path)
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	// Bounded: a configuration file is a few kilobytes; a huge one is a
	// mistake (or /dev/zero) and must not exhaust the shim's memory.
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFileLen+1))
	if err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	if len(data) > maxConfigFileLen {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", path, maxConfigFileLen)
	}
	return data, nil
}

// parse layers data (from source) over the embedded defaults and validates
// the result. With source "" only the defaults are used.
func parse(data []byte, source string) (*Config, error) {
	var r raw
	if _, err := decode(&r, vmpod.DefaultConfiguration, DefaultSource); err != nil {
		return nil, err
	}
	from := func(string) string { return DefaultSource }
	if source != "" {
		md, err := decode(&r, data, source)
		if err != nil {
			return nil, err
		}
		from = func(key string) string {
			if md.IsDefined(strings.Split(key, ".")...) {
				return source
			}
			return DefaultSource
		}
	}
	cfg, err := r.validate(from)
	if err != nil {
		return nil, err
	}
	cfg.Source = DefaultSource
	if source != "" {
		cfg.Source = source
	}
	return cfg, nil
}

// decode decodes data over r, refusing keys that r has no field for.
func decode(r *raw, data []byte, source string) (toml.MetaData, error) {
	md, err := toml.Decode(string(data), r)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return md, fmt.Errorf("config: %s in %s (line %d): %s", pe.LastKey, source, pe.Position.Line, pe.Message)
			}
			return md, fmt.Errorf("config: %s:%d: %s", source, pe.Position.Line, pe.Message)
		}
		return md, decodeError(source, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return md, fmt.Errorf("config: unknown key %s in %s", strings.Join(keys, ", "), source)
	}
	return md, nil
}

// The decoder reports a type error as
// `toml: line N (last key "K"): MSG`; reword it to lead with the key and
// file like every other error here, and drop Go type names from MSG.
var (
	decodeErrRE   = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)
	goTypeNamesRE = regexp.MustCompile(`^type mismatch for .*: (expected .*)$`)
)

func decodeError(source string, err error) error {
	m := decodeErrRE.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("config: %s: %w", source, err)
	}
	msg := m[3]
	if g := goTypeNamesRE.FindStringSubmatch(msg); g != nil {
		msg = g[1]
	}
	return fmt.Errorf("config: %s in %s (line %s): %s", m[2], source, m[1], msg)
}
