package hostcheck

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/clh"
)

// clhChecks are the checks of [hypervisor] type = "clh": the
// cloud-hypervisor binary and its version, the guest image in the form CH
// boots, virtiofsd, and KVM, without which CH cannot run at all.
func clhChecks(ctx context.Context, cfg *config.Config, host hypervisor.Host) []Result {
	return []Result{
		checkCLH(ctx, cfg),
		checkAsset(cfg, "kernel", "hypervisor.clh.kernel", cfg.Hypervisor.CLH.Kernel, cfg.KernelPath, elfKernelFormat),
		checkAsset(cfg, "initrd", "hypervisor.clh.initrd", cfg.Hypervisor.CLH.Initrd, cfg.InitrdPath, initrdFormat),
		checkVirtiofsd(cfg),
		checkCLHKVM(host),
		{Name: "vsock", Status: Pass, Reason: "Cloud Hypervisor's hybrid vsock (a Unix socket; needs nothing from the host)"},
	}
}

// checkCLH resolves hypervisor.clh.path and asks the binary its version,
// which must be clh.MinVersion or later.
func checkCLH(ctx context.Context, cfg *config.Config) Result {
	const name = "cloud-hypervisor"
	fix := fmt.Sprintf("install Cloud Hypervisor v%d or later (a release binary from its project; no Debian suite packages it) or set hypervisor.clh.path in %s; or set [hypervisor] type = \"qemu\"", clh.MinVersion, settingIn(cfg))
	path, err := cfg.CLHBinary()
	if err != nil {
		return Result{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	out, err := runProgram(ctx, path, "--version")
	if err != nil {
		return Result{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	v := strings.TrimSpace(firstLine(out))
	if err := clh.CheckVersion(v); err != nil {
		return Result{Name: name, Status: Fail, Reason: fmt.Sprintf("%s --version: %v", path, err), Fix: fix}
	}
	return Result{Name: name, Status: Pass, Reason: path + ": " + v + " (driver experimental: not run in CI on a real CH)"}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// checkCLHKVM: CH has no emulator, so KVM must work; without vmx or svm
// the /dev/kvm may be a paravirtual device on which stock guests die.
func checkCLHKVM(host hypervisor.Host) Result {
	const name = "kvm"
	switch {
	case !host.KVMUsable:
		return Result{Name: name, Status: Fail,
			Reason: clh.KVMDevice + " is missing or cannot be opened for reading and writing: Cloud Hypervisor runs guests with KVM only",
			Fix:    "run on a host whose CPU shows vmx or svm with the kvm module loaded (on a cloud VM: enable nested virtualization), and give the shim access to " + clh.KVMDevice + "; or set [hypervisor] type = \"qemu\", which falls back to TCG"}
	case !host.HWVirt:
		return Result{Name: name, Status: Warn,
			Reason: clh.KVMDevice + " opens, but the CPU flags show neither vmx nor svm: stock guests may die with \"KVM internal error\"",
			Fix:    "run on a host with hardware virtualization, or set [hypervisor] type = \"qemu\" (TCG)"}
	}
	return Result{Name: name, Status: Pass, Reason: clh.KVMDevice + " usable, CPU has vmx or svm"}
}

// elfKernelFormat accepts what CH boots directly on x86-64, an ELF vmlinux,
// not a bzImage, and then checks it as for QEMU (kernelFormat).
func elfKernelFormat(path string) (string, error) {
	if err := isELF(path); err != nil {
		return "", err
	}
	return kernelFormat(path)
}

func isELF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, []byte("\x7fELF")) {
		return fmt.Errorf("kernel %s is not an ELF vmlinux, which Cloud Hypervisor needs (make image writes one; a bzImage does not boot)", path)
	}
	return nil
}
