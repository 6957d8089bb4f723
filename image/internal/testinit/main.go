// Command testinit is a trivial guest /init for tests and benchmarks. By
// default it powers the VM off at once, so that booting it measures the
// floor cost of kernel and initrd. With vmpod_testinit=sleep on the kernel
// command line (the kernel passes such parameters to init as environment)
// it sleeps instead, standing in for an agent that never answers. With
// vmpod_testinit=modules it first loads the image's boot modules (as the
// agent does), so that a floor on a modular kernel brings its virtio,
// vsock and virtio-fs drivers up like a usable VM would. With
// vmpod_testinit=alloc it writes 128 MiB, frees it, prints the features
// the guest's virtio-balloon driver negotiated, and sleeps: the host can
// then see whether the freed memory came back (free page reporting).
package main

import (
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vmpod/vmpod/kmod"
	"golang.org/x/sys/unix"
)

func main() {
	if os.Getenv("vmpod_testinit") == "sleep" {
		os.Stdout.WriteString("vmpod-testinit: sleeping\n")
		sleep()
	}
	if os.Getenv("vmpod_testinit") == "alloc" {
		if _, err := os.Stat(kmod.ListPath); err == nil {
			loadModules() // a modular kernel's virtio_balloon
		}
		allocAndFree(128 << 20)
		sleep()
	}
	if os.Getenv("vmpod_testinit") == "modules" {
		loadModules()
	}
	os.Stdout.WriteString("vmpod-testinit: powering off\n")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		os.Stderr.WriteString("vmpod-testinit: " + err.Error() + "\n")
	}
	sleep()
}

// sleep never returns. (A bare select{} would make the Go runtime report a
// deadlock and exit, and PID 1 exiting panics the kernel.)
func sleep() {
	for {
		time.Sleep(time.Hour)
	}
}

// loadModules loads /etc/vmpod/modules like the agent (kmod.LoadListed),
// without /proc mounted: the release comes from uname.
func loadModules() {
	dir, err := kmod.ModulesDir()
	if err == nil {
		err = kmod.LoadListed(kmod.ListPath, dir)
	}
	if err != nil {
		os.Stderr.WriteString("vmpod-testinit: " + err.Error() + "\n")
	}
}

// allocAndFree writes n bytes of fresh anonymous memory and unmaps them,
// then prints "vmpod-testinit: freed N MiB, balloon features F", F being
// the virtio-balloon device's negotiated feature bits as sysfs shows them
// (bit 5 is free page reporting), or "none" without a balloon.
func allocAndFree(n int) {
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		os.Stderr.WriteString("vmpod-testinit: mmap: " + err.Error() + "\n")
		return
	}
	for i := 0; i < n; i += 4096 {
		mem[i] = 1
	}
	if err := unix.Munmap(mem); err != nil {
		os.Stderr.WriteString("vmpod-testinit: munmap: " + err.Error() + "\n")
	}
	features := "none"
	os.MkdirAll("/sys", 0o755)
	if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		os.Stderr.WriteString("vmpod-testinit: mount /sys: " + err.Error() + "\n")
	}
	if m, _ := filepath.Glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"); len(m) > 0 {
		if b, err := os.ReadFile(m[0]); err == nil {
			features = string(b[:len(b)-min(len(b), 1)])
		}
	}
	os.Stdout.WriteString("vmpod-testinit: freed " + strconv.Itoa(n>>20) + " MiB, balloon features " + features + "\n")
}
