// Package hostcheck answers "can vmpod run here, and how?": it inspects the
// configuration, the binaries and guest image it names, and what the host
// kernel offers (KVM, vhost-vsock, tun, tc, cgroups, containerd's runtime
// table), and reports one Result per check.
//
// A check fails only when vmpod cannot start a VM at all. Anything vmpod
// works around (TCG instead of KVM, its own vhost-user vsock backend instead
// of the kernel's) or that only some pods need (tap devices, tc) is a
// warning with the fix.
package hostcheck

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
)

// Status is the outcome of one check.
type Status string

// The outcomes, from best to worst.
const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's outcome.
type Result struct {
	Name   string
	Status Status
	Reason string // what was found, or what is wrong
	Fix    string // for Warn and Fail: what to do about it
}

// Options are the inputs of Run.
type Options struct {
	// ConfigPath is the --config flag; "" falls back to $VMPOD_CONFIG,
	// /etc/vmpod/configuration.toml and the embedded defaults, as the shim
	// does (config.Load).
	ConfigPath string
	// ContainerdConfig is containerd's configuration file; "" means
	// DefaultContainerdConfig.
	ContainerdConfig string
}

// DefaultContainerdConfig is where containerd reads its configuration.
const DefaultContainerdConfig = "/etc/containerd/config.toml"

// Run performs every check in order. ctx bounds the programs it runs
// (QEMU's -version and -device help).
func Run(ctx context.Context, opts Options) []Result {
	cfg, err := config.Load(opts.ConfigPath)
	var rs []Result
	if err != nil {
		rs = append(rs, Result{Name: "config", Status: Fail, Reason: err.Error(),
			Fix: "fix the file named above (docs/configuration.md describes every key); the checks that need the configuration were skipped"})
	} else {
		rs = append(rs, Result{Name: "config", Status: Pass, Reason: configSource(cfg.Source)})
	}
	accel, vsockMode, netModel := hypervisor.AccelAuto, "auto", "tcfilter"
	qemu := ""
	if cfg != nil && cfg.Hypervisor.Type == config.TypeCLH {
		netModel = cfg.Runtime.NetworkModel
		rs = append(rs, clhChecks(ctx, cfg, hypervisor.HostInfo())...)
	} else {
		if cfg != nil {
			q := cfg.Hypervisor.QEMU
			accel, vsockMode, netModel = q.Accel, q.VsockMode, cfg.Runtime.NetworkModel
			var r Result
			qemu, r = checkQEMU(ctx, cfg)
			rs = append(rs, r,
				checkAsset(cfg, "kernel", "hypervisor.qemu.kernel", cfg.Hypervisor.QEMU.Kernel, cfg.KernelPath, kernelFormat),
				checkAsset(cfg, "initrd", "hypervisor.qemu.initrd", cfg.Hypervisor.QEMU.Initrd, cfg.InitrdPath, initrdFormat),
				checkVirtiofsd(cfg),
				checkHotplug(cfg))
		}
		rs = append(rs, checkAccel(accel, hypervisor.HostInfo()))
		machine := machineOf(cfg)
		rs = append(rs, checkVsock(vsockMode, machine, vhostVsockPresent(), qemuDevices(ctx, qemu, machine)))
	}
	rs = append(rs, checkCgroups(readMountinfo()))
	rs = append(rs, checkTun(netModel, tunDevice))
	rs = append(rs, checkTC(netModel))
	ctrdConf := opts.ContainerdConfig
	if ctrdConf == "" {
		ctrdConf = DefaultContainerdConfig
	}
	rs = append(rs, checkContainerdConfig(ctrdConf), checkShimBinary())
	return rs
}

func configSource(src string) string {
	if src == config.DefaultSource {
		return fmt.Sprintf("built-in defaults (no --config, $%s or %s)", config.EnvConfig, config.SystemPath)
	}
	return src + " over the built-in defaults"
}

// settingIn names the file in which to change a setting: the one in use,
// or the host-wide one when only the defaults are.
func settingIn(cfg *config.Config) string {
	if cfg.Source == config.DefaultSource {
		return config.SystemPath
	}
	return cfg.Source
}

func machineOf(cfg *config.Config) string {
	if cfg == nil {
		return hypervisor.MachineQ35
	}
	return cfg.Hypervisor.QEMU.MachineType
}

// Failed reports whether any result is a Fail: vmpod cannot run.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// Write prints one line per result, "status  name  reason", and the fix of
// a warning or failure on the next line.
func Write(w io.Writer, rs []Result) error {
	width := 0
	for _, r := range rs {
		width = max(width, len(r.Name))
	}
	indent := strings.Repeat(" ", 4+2+width+2)
	for _, r := range rs {
		if _, err := fmt.Fprintf(w, "%-4s  %-*s  %s\n", r.Status, width, r.Name, oneLine(r.Reason)); err != nil {
			return err
		}
		if r.Status != Pass && r.Fix != "" {
			if _, err := fmt.Fprintf(w, "%sfix: %s\n", indent, indentLines(r.Fix, indent+"     ")); err != nil {
				return err
			}
		}
	}
	return nil
}

// oneLine keeps a reason on its line: error texts from programs may hold
// newlines.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// indentLines indents the continuation lines of a multi-line fix (a TOML
// snippet) so that the report stays readable.
func indentLines(s, indent string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+indent)
}
