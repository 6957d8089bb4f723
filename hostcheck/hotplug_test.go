package hostcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/config"
)

func TestCheckHotplug(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("\x7fELF not a real kernel"), 0o644)
	cfgWith := func(machine, mode string) *config.Config {
		return &config.Config{Source: "/etc/x.toml",
			Hypervisor: config.Hypervisor{QEMU: config.QEMU{MachineType: machine, Kernel: kernel, MaxMemory: 4096}},
			Runtime:    config.Runtime{ResourceManagement: mode}}
	}
	for _, tc := range []struct {
		name, machine, mode, kconfig string
		status                       Status
		reason                       string
	}{
		{"static", "q35", "static", "", Pass, `off (runtime.resource_management = "static")`},
		{"microvm", "microvm", "both", "", Warn, "machine type microvm cannot hot-plug"},
		{"no kernel config", "q35", "both", "", Warn, "no vmlinux.config next to it"},
		{"kernel lacks it", "q35", "hotplug", "CONFIG_ACPI_HOTPLUG_CPU=y\n", Warn, "lacks ACPI memory hot-plug (CONFIG_ACPI_HOTPLUG_MEMORY), memory hot-plug (CONFIG_MEMORY_HOTPLUG)"},
		{"ok", "q35", "both", "CONFIG_ACPI_HOTPLUG_CPU=y\nCONFIG_ACPI_HOTPLUG_MEMORY=y\nCONFIG_MEMORY_HOTPLUG=y\n", Pass, "VMs grow up to the host's vCPUs and 4096 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := kernel + ".config"
			os.Remove(cp)
			if tc.kconfig != "" {
				os.WriteFile(cp, []byte(tc.kconfig), 0o644)
			}
			r := checkHotplug(cfgWith(tc.machine, tc.mode))
			if r.Status != tc.status || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("%+v, want %s with %q", r, tc.status, tc.reason)
			}
			if r.Status == Warn && !strings.Contains(r.Fix, "/etc/x.toml") {
				t.Errorf("fix %q does not name the file to change", r.Fix)
			}
		})
	}
}
