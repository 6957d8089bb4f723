package clh

import (
	"fmt"
	"strings"

	"github.com/vmpod/vmpod/hypervisor"
)

// baseKernelParams: the console on the legacy serial port (8250, built into
// the guest kernels vmpod uses), which CH writes to the console FIFO. CH
// reboots the guest when it reboots (it has no -no-reboot), so a panic
// waits a second, for the console to show it, before it does.
var baseKernelParams = []string{"console=ttyS0", "panic=1", "reboot=k", "quiet"}

// Queue sizes of the virtio-fs device (FsConfig's required fields, at the
// document's defaults).
const (
	fsQueues    = 1
	fsQueueSize = 1024
)

// kernelParams is the guest kernel's command line.
func kernelParams(cfg hypervisor.Config) string {
	return strings.Join(append(append([]string(nil), baseKernelParams...), cfg.KernelParams...), " ")
}

// buildVMConfig is vm.create's body for cfg (defaults applied), with the
// serial console written to consoleFile. NICs are not in it: Start adds
// them with vm.add-net, in order, before the boot.
func buildVMConfig(cfg hypervisor.Config, consoleFile string) vmConfig {
	vc := vmConfig{
		CPUs: &cpusConfig{BootVCPUs: cfg.VCPUs, MaxVCPUs: cfg.VCPUs},
		// Shared whenever a vhost-user daemon maps guest memory
		// (virtiofsd); cheap enough to keep it simple otherwise too.
		Memory:  &memoryConfig{Size: int64(cfg.MemoryMiB) << 20, Shared: cfg.SharedFS != nil},
		Payload: payloadConfig{Kernel: cfg.Kernel, Initramfs: cfg.Initrd, Cmdline: kernelParams(cfg)},
		Serial:  &consoleConfig{Mode: consoleFileMode, File: consoleFile},
		Console: &consoleConfig{Mode: consoleOff},
	}
	if fs := cfg.SharedFS; fs != nil {
		vc.FS = []fsConfig{{Tag: fs.Tag, Socket: fs.Socket, NumQueues: fsQueues, QueueSize: fsQueueSize}}
	}
	if v := cfg.Vsock; v != nil {
		vc.Vsock = &vsockConfig{CID: int64(v.GuestCID), Socket: v.HybridSocket}
	}
	return vc
}

// netConfigFor is vm.add-net's body for NIC i. A tap passed as a descriptor
// takes one queue pair (num_queues = 2 per descriptor), as CH requires.
func netConfigFor(i int, n hypervisor.NetDevice) netConfig {
	nc := netConfig{MAC: n.MAC.String(), MTU: n.MTU, ID: fmt.Sprintf("vmpod-net%d", i)}
	if n.Tap != nil {
		nc.NumQueues = 2
	} else {
		nc.Tap = n.TapName
	}
	return nc
}
