package hostcheck

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/kernel/kconfig"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
)

// checkHotplug says whether pods' VMs can grow while they run: the
// configuration must ask for it, the machine type must have ACPI hot-plug
// and the guest kernel must support it. Otherwise VMs keep the size they
// boot with: a warning, since pods still run.
func checkHotplug(cfg *config.Config) Result {
	const name = "hotplug"
	if !cfg.Runtime.Hotplug() {
		return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("off (runtime.resource_management = %q): VMs are sized at boot", cfg.Runtime.ResourceManagement)}
	}
	q := cfg.Hypervisor.QEMU
	if err := hypervisor.HotplugSupport(q.MachineType); err != nil {
		return Result{Name: name, Status: Warn, Reason: err.Error(),
			Fix: fmt.Sprintf("set hypervisor.qemu.machine_type = \"q35\" for CPU and memory hot-plug, or runtime.resource_management = \"static\" in %s", settingIn(cfg))}
	}
	fix := fmt.Sprintf("use a guest kernel with ACPI CPU and memory hot-plug (make image builds one; Debian's cloud kernel has them), or set runtime.resource_management = \"static\" in %s", settingIn(cfg))
	kernel, err := cfg.KernelPath()
	if err != nil {
		return Result{Name: name, Status: Warn, Reason: "no guest kernel to inspect: " + err.Error(), Fix: fix}
	}
	kcfg, from, err := kernelcheck.ReadConfig(kernel)
	if err != nil {
		return Result{Name: name, Status: Warn, Reason: "cannot tell whether the guest kernel can hot-plug: " + err.Error(), Fix: fix}
	}
	if kcfg == nil {
		return Result{Name: name, Status: Warn, Reason: fmt.Sprintf("cannot tell whether guest kernel %s can hot-plug: no %s%s next to it and no CONFIG_IKCONFIG", kernel, filepath.Base(kernel), kernelcheck.ConfigSuffix), Fix: fix}
	}
	if missing := kconfig.Missing(kcfg, kconfig.HotplugNeeds); len(missing) > 0 {
		return Result{Name: name, Status: Warn, Reason: fmt.Sprintf("guest kernel %s lacks %s (%s): VMs keep the size they boot with", kernel, strings.Join(missing, ", "), from), Fix: fix}
	}
	return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("q35, guest kernel %s: VMs grow up to %s vCPUs and %d MiB", kernel, maxVCPUsText(q), q.MaxMemory)}
}

func maxVCPUsText(q config.QEMU) string {
	if q.MaxVCPUs == 0 {
		return "the host's"
	}
	return fmt.Sprint(q.MaxVCPUs)
}
