package qemu

import (
	"fmt"
	"strings"

	"github.com/vmpod/vmpod/hypervisor"
)

// baseKernelParams: serial console (8250 is built into the cloud kernel,
// virtio-console is a module), reboot at once on panic, and a reboot that
// -no-reboot turns into a QEMU exit, so a dead guest ends the process.
// no_timer_check: q35 guests booting at once on a loaded host under TCG
// otherwise panic with "IO-APIC + timer doesn't work!" (Kata sets it too).
// swiotlb=noforce: the room to hot-plug memory lies above 4 GiB, and a
// kernel that may have memory there sets aside 64 MiB of bounce buffers
// for 32-bit DMA at boot, a quarter of a small guest; virtio devices
// without VIRTIO_F_ACCESS_PLATFORM never bounce.
var baseKernelParams = []string{"console=ttyS0", "panic=-1", "reboot=k", "quiet", "no_timer_check", "swiotlb=noforce"}

// commandLine is what the builder needs beyond the guest configuration.
type commandLine struct {
	cfg       hypervisor.Config // with defaults applied
	accel     string            // resolved: kvm or tcg
	tscKHz    uint64            // host TSC rate, for microvm
	qmpSocket string
	vhostFD   int   // the child's fd number of Vsock.VhostFD, 0 if none
	tapFDs    []int // the child's fd number of each Net[i].Tap
	jail      *Jail // nil: QEMU keeps running as its parent's user
}

// kernelParams is the guest kernel's command line.
func (c commandLine) kernelParams() string {
	params := append([]string(nil), baseKernelParams...)
	if c.cfg.Machine == hypervisor.MachineMicrovm && c.tscKHz > 0 {
		// Without it, several microvm guests booting at once under TCG
		// can hang calibrating the TSC ("Marking TSC unstable").
		params = append(params, fmt.Sprintf("tsc_early_khz=%d", c.tscKHz))
	}
	return strings.Join(append(params, c.cfg.KernelParams...), " ")
}

// args builds QEMU's arguments (without the binary).
func (c commandLine) args() []string {
	cfg := c.cfg
	microvm := cfg.Machine == hypervisor.MachineMicrovm
	// vhost-user devices read guest memory directly, so it must be a
	// shareable memfd.
	shared := sharedMemory(cfg)
	machine := cfg.Machine
	if shared {
		machine += ",memory-backend=mem"
	}
	a := []string{
		"-name", "vmpod-" + cfg.ID + ",debug-threads=on",
		"-machine", machine,
		"-accel", c.accelArg(),
		"-m", memoryArg(cfg),
		"-smp", smpArg(cfg),
	}
	if c.accel == hypervisor.AccelKVM {
		a = append(a, "-cpu", "host")
	}
	if microvm {
		// QEMU 7.2's virtio-mmio transports are legacy (virtio 0.9.5)
		// unless told otherwise, and a legacy guest driver never offers
		// VIRTIO_F_VERSION_1. libvhost-user, which virtiofsd is built on,
		// refuses such a device ("virtio legacy devices aren't supported
		// by libvhost-user") and exits when the driver starts it; the
		// guest's FUSE_INIT then waits forever, and so did the first use
		// of the pod's share. Modern virtio-mmio (version 2) is what
		// Kata and Firecracker run too.
		a = append(a, "-global", "virtio-mmio.force-legacy=false")
	}
	if shared {
		a = append(a, "-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", cfg.MemoryMiB))
	}
	a = append(a,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-sandbox", c.sandbox(),
		// The console goes to QEMU's stdout, which the driver reads line
		// by line; signal=off keeps a stray ^C in the output harmless.
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-qmp", "unix:"+c.qmpSocket+",server=on,wait=off",
		"-kernel", cfg.Kernel,
		"-initrd", cfg.Initrd,
		"-append", c.kernelParams(),
	)
	dev := func(pci, mmio string) string {
		if microvm {
			return mmio
		}
		return pci
	}
	if v := cfg.Vsock; v != nil {
		if v.VhostUserSocket != "" {
			a = append(a,
				"-chardev", "socket,id=vsock,path="+v.VhostUserSocket,
				"-device", dev("vhost-user-vsock-pci", "vhost-user-vsock-device")+",chardev=vsock")
		} else {
			d := fmt.Sprintf("%s,guest-cid=%d", dev("vhost-vsock-pci", "vhost-vsock-device"), v.GuestCID)
			if c.vhostFD > 0 {
				d += fmt.Sprintf(",vhostfd=%d", c.vhostFD)
			}
			a = append(a, "-device", d)
		}
	}
	if fs := cfg.SharedFS; fs != nil {
		a = append(a,
			"-chardev", "socket,id=fs,path="+fs.Socket,
			"-device", dev("vhost-user-fs-pci", "vhost-user-fs-device")+",chardev=fs,tag="+fs.Tag)
	}
	for i, n := range cfg.Net {
		nic := fmt.Sprintf("%s,netdev=net%d,mac=%s", dev("virtio-net-pci", "virtio-net-device"), i, n.MAC)
		if n.MTU > 0 {
			nic += fmt.Sprintf(",host_mtu=%d", n.MTU)
		}
		// vhost=off: these hosts have no vhost-net; QEMU moves the frames.
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=net%d,fd=%d,vhost=off", i, c.tapFDs[i]),
			"-device", nic)
	}
	if cfg.FreePageReporting {
		// The guest reports free 2 MiB blocks (pageblock order) a couple
		// of seconds after they are freed; QEMU punches them out of the
		// memfd (fallocate), which frees them for the vhost-user
		// backends that map it too. No inflation target is ever set: the
		// balloon only gives back what the guest does not use.
		a = append(a, "-device", dev("virtio-balloon-pci", "virtio-balloon-device")+",free-page-reporting=on")
	}
	if j := c.jail; j != nil {
		// Both take effect once everything is open, just before the guest
		// runs: chroot first (as root), then setgid, setgroups, setuid.
		// Anything QEMU would open later (a hot-plugged device, say) must
		// come as a descriptor. Newer QEMUs spell these -run-with
		// chroot=,user=; 7.2 (Debian 12) knows only these.
		a = append(a, "-chroot", j.Dir, "-runas", fmt.Sprintf("%d:%d", j.UID, j.GID))
	}
	return append(a, cfg.ExtraArgs...)
}

// accelArg is -accel: under TCG with a bounded translation cache, its
// size in MiB (QEMU otherwise reserves 1 GiB and fills as much of it as
// the guest's code needs).
func (c commandLine) accelArg() string {
	if c.accel == hypervisor.AccelTCG && c.cfg.TCGTBSizeMiB > 0 {
		return fmt.Sprintf("%s,tb-size=%d", c.accel, c.cfg.TCGTBSizeMiB)
	}
	return c.accel
}

// memoryArg is -m: the boot RAM, and room for DIMMs up to the maximum
// when the guest may grow.
func memoryArg(cfg hypervisor.Config) string {
	h := newHotplug(cfg)
	if h.max.MemoryMiB <= cfg.MemoryMiB {
		return fmt.Sprintf("%dM", cfg.MemoryMiB)
	}
	return fmt.Sprintf("%dM,slots=%d,maxmem=%dM", cfg.MemoryMiB, h.slots, h.max.MemoryMiB)
}

// smpArg is -smp: the boot vCPUs, and room for more when the guest may
// grow.
func smpArg(cfg hypervisor.Config) string {
	h := newHotplug(cfg)
	if h.max.VCPUs <= cfg.VCPUs {
		return fmt.Sprint(cfg.VCPUs)
	}
	return fmt.Sprintf("%d,maxcpus=%d", cfg.VCPUs, h.max.VCPUs)
}

// sandbox is QEMU's seccomp policy: a guest that escapes into QEMU cannot
// exec or use obsolete system calls. Unjailed, it cannot gain privileges
// either; jailed, QEMU must call setuid itself, which elevateprivileges=deny
// would kill it for, and once it has dropped to an unprivileged uid there
// is nothing left to gain. resourcecontrol=deny then also takes away
// scheduler and priority changes, which QEMU needs only for options vmpod
// does not use.
func (c commandLine) sandbox() string {
	if c.jail != nil {
		return "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
	}
	return "on,obsolete=deny,elevateprivileges=deny,spawn=deny"
}
