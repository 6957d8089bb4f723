// Command testinit is a trivial guest /init for tests and benchmarks. By
// default it powers the VM off at once, so that booting it measures the
// floor cost of kernel and initrd. With vmpod_testinit=sleep on the kernel
// command line (the kernel passes such parameters to init as environment)
// it sleeps instead, standing in for an agent that never answers. With
// vmpod_testinit=modules it first loads the image's boot modules (as the
// agent does), so that a floor on a modular kernel brings its virtio,
// vsock and virtio-fs drivers up like a usable VM would.
package main

import (
	"os"
	"time"

	"github.com/vmpod/vmpod/kmod"
	"golang.org/x/sys/unix"
)

func main() {
	if os.Getenv("vmpod_testinit") == "sleep" {
		os.Stdout.WriteString("vmpod-testinit: sleeping\n")
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
