package hostcheck

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
	"github.com/vmpod/vmpod/vsock"
)

// Bounds on the programs the checks run: QEMU answers -version and
// -device help in well under a second; a hung binary must not hang the
// check.
const (
	progTimeout   = 10 * time.Second
	progOutputMax = 1 << 20
)

// checkQEMU resolves hypervisor.qemu.path and asks the binary its version.
// It returns the resolved path ("" when unusable) for later checks.
func checkQEMU(ctx context.Context, cfg *config.Config) (string, Result) {
	const name = "qemu"
	fix := "install QEMU (Debian: apt-get install qemu-system-x86) or set hypervisor.qemu.path in " + settingIn(cfg)
	path, err := cfg.QEMUBinary()
	if err != nil {
		return "", Result{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	out, err := runProgram(ctx, path, "-version")
	if err != nil {
		return "", Result{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	v := qemuVersion(out)
	if v == "" {
		return path, Result{Name: name, Status: Warn,
			Reason: fmt.Sprintf("%s -version printed no \"QEMU emulator version\" line", path),
			Fix:    "check that hypervisor.qemu.path names qemu-system-x86_64"}
	}
	return path, Result{Name: name, Status: Pass, Reason: path + ": " + v}
}

// qemuVersion is the "QEMU emulator version ..." line of -version output.
func qemuVersion(out string) string {
	for line := range strings.Lines(out) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "QEMU emulator version ") {
			return line
		}
	}
	return ""
}

// runProgram runs path with args under progTimeout and returns its
// combined output, of which it keeps at most progOutputMax bytes.
func runProgram(ctx context.Context, path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, progTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	out := &capped{max: progOutputMax}
	cmd.Stdout, cmd.Stderr = out, out
	// A child that keeps the pipe open after QEMU is killed must not
	// block Wait.
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("%s %s: no answer within %s: %w", path, strings.Join(args, " "), progTimeout, ctx.Err())
		}
		return "", fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, bytes.TrimSpace(out.buf.Bytes()))
	}
	return out.buf.String(), nil
}

// capped is an io.Writer keeping the first max bytes and dropping the rest.
type capped struct {
	buf bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// checkAsset finds the kernel or initrd as the shim would (resolve is
// Config.KernelPath or InitrdPath) and checks its contents with format.
func checkAsset(cfg *config.Config, name, key, configured string, resolve func() (string, error), format func(string) (string, error)) Result {
	fix := fmt.Sprintf("build the guest image (make image) or install it (make install), or set %s in %s", key, settingIn(cfg))
	p, err := resolve()
	if err != nil {
		return Result{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	note, err := format(p)
	if err != nil {
		return Result{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	if note != "" {
		note = ": " + note
	}
	if configured != "" {
		return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("%s (%s)%s", p, key, note)}
	}
	return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("%s (searched %s)%s", p, strings.Join(config.AssetDirs(), ", "), note)}
}

// kernelFormat accepts what QEMU boots with -kernel, a bzImage or an ELF
// vmlinux with a PVH entry, and whose configuration has what the guest
// needs (vsock, virtio-fs, ...): kernelcheck reads it from <kernel>.config
// or the image. The note says where the configuration came from, or that
// the features could not be checked.
func kernelFormat(path string) (string, error) {
	r, err := kernelcheck.Check(path)
	if err != nil {
		return "", err
	}
	note := r.Format
	if r.ConfigFrom == "" {
		note += "; features not checked: no " + filepath.Base(path) + kernelcheck.ConfigSuffix + " next to it and no CONFIG_IKCONFIG"
	} else {
		note += "; vsock, virtio-fs, overlayfs present (" + r.ConfigFrom + ")"
	}
	return note, nil
}

// initrdFormat only refuses an empty file: initrds come compressed in
// several formats, and the guest's kernel is the judge of those.
func initrdFormat(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("initrd %s: %w", path, err)
	}
	if fi.Size() == 0 {
		return "", fmt.Errorf("initrd %s is empty", path)
	}
	return "", nil
}

func checkVirtiofsd(cfg *config.Config) Result {
	p, err := cfg.VirtiofsdBinary()
	if err != nil {
		return Result{Name: "virtiofsd", Status: Fail, Reason: err.Error(),
			Fix: "install virtiofsd (Debian: qemu-system-common ships /usr/lib/qemu/virtiofsd) or set " + cfg.Hypervisor.Section() + ".virtiofsd_path in " + settingIn(cfg)}
	}
	return Result{Name: "virtiofsd", Status: Pass, Reason: p}
}

// checkAccel reports the accelerator the shim will choose for requested
// (hypervisor.qemu.accel) on host, with hypervisor.ChooseAccel itself.
func checkAccel(requested string, host hypervisor.Host) Result {
	const name = "accel"
	accel, why, err := hypervisor.ChooseAccel(requested, host)
	if err != nil {
		return Result{Name: name, Status: Fail, Reason: err.Error(),
			Fix: `set hypervisor.qemu.accel = "auto" (or "tcg")`}
	}
	switch {
	case accel == hypervisor.AccelKVM && !host.HWVirt:
		return Result{Name: name, Status: Warn,
			Reason: "kvm (configured), but the CPU flags show neither vmx nor svm: stock guests may die with \"KVM internal error\"",
			Fix:    `set hypervisor.qemu.accel = "auto" to fall back to TCG`}
	case accel == hypervisor.AccelKVM:
		return Result{Name: name, Status: Pass, Reason: "kvm: " + why}
	case requested == hypervisor.AccelTCG:
		return Result{Name: name, Status: Pass, Reason: "tcg (configured): VMs will be slow"}
	}
	var lacks []string
	if !host.KVMUsable {
		lacks = append(lacks, "/dev/kvm missing or unusable")
	}
	if !host.HWVirt {
		lacks = append(lacks, "CPU lacks vmx/svm")
	}
	return Result{Name: name, Status: Warn,
		Reason: "TCG fallback: " + strings.Join(lacks, ", ") + " — VMs will be slow",
		Fix:    "run on a host whose CPU shows vmx or svm and whose /dev/kvm opens (on a cloud VM: enable nested virtualization)"}
}

func vhostVsockPresent() bool {
	_, err := os.Stat(vsock.VhostVsockPath)
	return err == nil
}

// qemuDevices is `qemu -device help` for machine, "" when it cannot be
// had (no usable QEMU): the vsock check then skips the device test.
func qemuDevices(ctx context.Context, qemu, machine string) string {
	if qemu == "" {
		return ""
	}
	out, err := runProgram(ctx, qemu, "-machine", machine, "-device", "help")
	if err != nil {
		return ""
	}
	return out
}

// checkVsock reports which vsock the shim will use for mode
// (hypervisor.qemu.vsock_mode), whether the host has /dev/vhost-vsock, and
// whether QEMU (devices: its -device help) has the device for it.
func checkVsock(mode, machine string, kernelDev bool, devices string) Result {
	const name = "vsock"
	if mode == "vhost" && !kernelDev {
		return Result{Name: name, Status: Fail,
			Reason: "hypervisor.qemu.vsock_mode = \"vhost\", but " + vsock.VhostVsockPath + " is missing",
			Fix:    `modprobe vhost_vsock, or set hypervisor.qemu.vsock_mode = "auto" to use vmpod's vhost-user backend`}
	}
	kernel := mode == "vhost" || (mode == "auto" && kernelDev)
	dev := vsockDevice(kernel, machine)
	if devices != "" && !strings.Contains(devices, `name "`+dev+`"`) {
		return Result{Name: name, Status: Fail,
			Reason: "QEMU has no " + dev + " device",
			Fix:    "use QEMU 7.2 or later built with vhost-user and vhost-vsock support"}
	}
	switch {
	case kernel:
		return Result{Name: name, Status: Pass, Reason: "kernel vhost-vsock (" + vsock.VhostVsockPath + ", QEMU " + dev + ")"}
	case mode == "vhost-user":
		return Result{Name: name, Status: Pass, Reason: "vmpod's vhost-user vsock backend (configured; QEMU " + dev + ")"}
	}
	return Result{Name: name, Status: Warn,
		Reason: "no " + vsock.VhostVsockPath + ": using vmpod's vhost-user vsock backend (QEMU " + dev + ")",
		Fix:    "nothing needed; for the kernel's vhost-vsock instead, modprobe vhost_vsock"}
}

// vsockDevice names the QEMU device the driver uses (hypervisor/qemu's
// command line): PCI on q35, virtio-mmio on microvm.
func vsockDevice(kernel bool, machine string) string {
	base := "vhost-user-vsock"
	if kernel {
		base = "vhost-vsock"
	}
	if machine == hypervisor.MachineMicrovm {
		return base + "-device"
	}
	return base + "-pci"
}
