package hostcheck

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
)

// hotplugKernelOptions are what a guest kernel needs to take vCPUs and
// DIMMs while it runs (ACPI hot-plug on q35).
var hotplugKernelOptions = []string{"CONFIG_ACPI_HOTPLUG_CPU", "CONFIG_ACPI_HOTPLUG_MEMORY", "CONFIG_MEMORY_HOTPLUG"}

// kernelConfigDir is where a guest kernel's configuration is looked for,
// as config-<release> (Debian's /boot); a variable for tests.
var kernelConfigDir = "/boot"

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
	fix := fmt.Sprintf("use a guest kernel built with %s (Debian's cloud kernel has them), or set runtime.resource_management = \"static\" in %s", strings.Join(hotplugKernelOptions, ", "), settingIn(cfg))
	kernel, err := cfg.KernelPath()
	if err != nil {
		return Result{Name: name, Status: Warn, Reason: "no guest kernel to inspect: " + err.Error(), Fix: fix}
	}
	rel, err := kernelRelease(kernel)
	if err != nil {
		return Result{Name: name, Status: Warn, Reason: "cannot tell whether the guest kernel can hot-plug: " + err.Error(), Fix: fix}
	}
	missing, err := missingKernelOptions(filepath.Join(kernelConfigDir, "config-"+rel), hotplugKernelOptions)
	if err != nil {
		return Result{Name: name, Status: Warn, Reason: fmt.Sprintf("cannot tell whether guest kernel %s can hot-plug: %v", rel, err), Fix: fix}
	}
	if len(missing) > 0 {
		return Result{Name: name, Status: Warn, Reason: fmt.Sprintf("guest kernel %s lacks %s: VMs keep the size they boot with", rel, strings.Join(missing, ", ")), Fix: fix}
	}
	return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("q35, guest kernel %s: VMs grow up to %s vCPUs and %d MiB", rel, maxVCPUsText(q), q.MaxMemory)}
}

func maxVCPUsText(q config.QEMU) string {
	if q.MaxVCPUs == 0 {
		return "the host's"
	}
	return fmt.Sprint(q.MaxVCPUs)
}

// maxKernelScan bounds how much of a kernel file is searched for its
// version banner.
const maxKernelScan = 256 << 20

// kernelRelease reads a kernel image's release: from a bzImage's
// kernel_version header field, or from the "Linux version" banner of an
// uncompressed vmlinux.
func kernelRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 0x210)
	if n, _ := io.ReadFull(f, head); n == len(head) && string(head[0x202:0x206]) == "HdrS" {
		off := int64(binary.LittleEndian.Uint16(head[0x20e:])) + 0x200
		buf := make([]byte, 256)
		n, _ := f.ReadAt(buf, off)
		if rel, _, _ := strings.Cut(string(buf[:n]), " "); rel != "" && !strings.ContainsRune(rel, 0) {
			return rel, nil
		}
		return "", fmt.Errorf("kernel %s: no version in its boot header", path)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	const banner = "Linux version "
	r := bufio.NewReaderSize(io.LimitReader(f, maxKernelScan), 1<<20)
	var carry []byte
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		chunk := append(carry, buf[:n]...)
		if i := bytes.Index(chunk, []byte(banner)); i >= 0 && len(chunk)-i > len(banner)+64 {
			rel, _, _ := strings.Cut(string(chunk[i+len(banner):i+len(banner)+64]), " ")
			return rel, nil
		}
		if len(chunk) > 256 {
			carry = append([]byte(nil), chunk[len(chunk)-256:]...)
		} else {
			carry = chunk
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", fmt.Errorf("kernel %s: no %q banner", path, banner)
			}
			return "", err
		}
	}
}

// missingKernelOptions returns the options that path (a kernel .config)
// does not set to y.
func missingKernelOptions(path string, opts []string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && v == "y" {
			set[k] = true
		}
	}
	var missing []string
	for _, o := range opts {
		if !set[o] {
			missing = append(missing, o)
		}
	}
	return missing, nil
}
