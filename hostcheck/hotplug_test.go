package hostcheck

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/config"
)

func TestKernelRelease(t *testing.T) {
	dir := t.TempDir()
	// A bzImage: "HdrS" at 0x202, kernel_version at 0x20e points 0x200
	// below the string.
	bz := make([]byte, 0x400)
	copy(bz[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(bz[0x20e:], 0x100)
	copy(bz[0x300:], "6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\x00")
	// A vmlinux: the banner somewhere past the first read.
	elf := append(append(make([]byte, 3<<20), "Linux version 6.1.0-9-amd64 (gcc) #1 SMP PREEMPT_DYNAMIC Debian 6.1.27-1 (2023-05-08)"...), make([]byte, 100)...)
	for _, tc := range []struct {
		name, content, want string
	}{
		{"bzImage", string(bz), "6.1.0-57-cloud-amd64"},
		{"vmlinux", string(elf), "6.1.0-9-amd64"},
		{"neither", strings.Repeat("x", 5000), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := kernelRelease(p)
			if got != tc.want || (tc.want == "") != (err != nil) {
				t.Errorf("kernelRelease = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestMissingKernelOptions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config")
	os.WriteFile(p, []byte("CONFIG_ACPI_HOTPLUG_CPU=y\n# CONFIG_ACPI_HOTPLUG_MEMORY is not set\nCONFIG_MEMORY_HOTPLUG=m\n"), 0o644)
	got, err := missingKernelOptions(p, hotplugKernelOptions)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"CONFIG_ACPI_HOTPLUG_MEMORY", "CONFIG_MEMORY_HOTPLUG"}; !slices.Equal(got, want) {
		t.Errorf("missing %v, want %v", got, want)
	}
}

func TestCheckHotplug(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("....Linux version 6.1.0-1-test (x) #1 SMP "+strings.Repeat(" ", 100)), 0o644)
	old := kernelConfigDir
	kernelConfigDir = dir
	t.Cleanup(func() { kernelConfigDir = old })
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
		{"no kernel config", "q35", "both", "", Warn, "cannot tell whether guest kernel 6.1.0-1-test can hot-plug"},
		{"kernel lacks it", "q35", "hotplug", "CONFIG_ACPI_HOTPLUG_CPU=y\n", Warn, "lacks CONFIG_ACPI_HOTPLUG_MEMORY, CONFIG_MEMORY_HOTPLUG"},
		{"ok", "q35", "both", "CONFIG_ACPI_HOTPLUG_CPU=y\nCONFIG_ACPI_HOTPLUG_MEMORY=y\nCONFIG_MEMORY_HOTPLUG=y\n", Pass, "VMs grow up to the host's vCPUs and 4096 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := filepath.Join(dir, "config-6.1.0-1-test")
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
