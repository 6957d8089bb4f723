// Package hypervisor defines how vmpod drives a virtual machine monitor:
// the configuration of one guest and the small lifecycle interface that
// every driver (QEMU first) implements.
package hypervisor

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
)

// Machine types.
const (
	MachineQ35     = "q35"
	MachineMicrovm = "microvm"
)

// MaxVCPUs is the most vCPUs a guest may have (x86 xAPIC ids).
const MaxVCPUs = 255

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Config describes one guest.
type Config struct {
	// ID names the guest in logs and in the VMM's process title.
	ID string
	// Path is the VMM binary.
	Path string
	// Kernel and Initrd are the guest image.
	Kernel, Initrd string
	// KernelParams are appended to the driver's own kernel command line.
	KernelParams []string
	// Machine is MachineQ35 (default) or MachineMicrovm.
	Machine string
	// Accel is AccelAuto (default), AccelKVM or AccelTCG.
	Accel string
	// VCPUs (default 1) and MemoryMiB (default 512) size the guest.
	VCPUs     int
	MemoryMiB int
	// MaxVCPUs and MaxMemoryMiB leave the guest room to grow while it
	// runs (Hotplugger). Values not above VCPUs and MemoryMiB leave none;
	// a machine that cannot hot-plug (HotplugSupport) ignores them.
	MaxVCPUs     int
	MaxMemoryMiB int
	// Vsock, when set, gives the guest a vsock device.
	Vsock *Vsock
	// SharedFS, when set, gives the guest a virtio-fs device.
	SharedFS *SharedFS
	// Net are the guest's virtio-net NICs, in order (eth0, eth1, ...).
	Net []NetDevice
	// StateDir holds the driver's sockets; it is created if missing.
	StateDir string
	// Console, when set, receives the guest console's output line by line
	// from one goroutine (it is also logged at debug level).
	Console io.Writer
	// ExtraArgs are appended to the VMM's command line as they are.
	ExtraArgs []string
	// FreePageReporting gives the guest a virtio-balloon device with free
	// page reporting: memory the guest frees goes back to the host.
	FreePageReporting bool
	// TCGTBSizeMiB bounds the TCG translation cache (QEMU's tb-size)
	// when the guest runs under TCG; 0 leaves QEMU's default (1 GiB of
	// address space, filled as code is translated).
	TCGTBSizeMiB int
}

// Vsock is the guest's vsock device: vmpod's vhost-user backend listening
// on VhostUserSocket, or the host kernel's vhost-vsock with GuestCID, or
// (Cloud Hypervisor) the VMM's own hybrid vsock on HybridSocket.
type Vsock struct {
	VhostUserSocket string
	GuestCID        uint32
	// VhostFD, for kernel vhost-vsock, is an open /dev/vhost-vsock on which
	// GuestCID is already claimed (vsock.AllocateCID), so that two VMs
	// cannot race for one CID. The VMM inherits it.
	VhostFD *os.File
	// HybridSocket is where a VMM with hybrid vsock (Cloud Hypervisor)
	// listens for "CONNECT <port>" (vsock.DialHybrid); GuestCID is then the
	// guest's CID as that VMM knows it.
	HybridSocket string
}

// NetDevice is a virtio-net NIC backed by a tap the caller opened
// (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR). The VMM inherits the descriptor; the
// caller may close its copy once Start returned.
type NetDevice struct {
	Tap *os.File
	// TapName, for a driver that can open a tap itself (Cloud Hypervisor),
	// names the tap when Tap is nil.
	TapName string
	// MAC is the guest NIC's address.
	MAC net.HardwareAddr
	// MTU, when set, is offered to the guest driver (virtio host_mtu).
	MTU int
}

// SharedFS is a virtio-fs device served by a vhost-user daemon (virtiofsd)
// on Socket; the guest mounts it by Tag.
type SharedFS struct {
	Socket string
	Tag    string
}

// WithDefaults returns c with empty fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Machine == "" {
		c.Machine = MachineQ35
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.VCPUs == 0 {
		c.VCPUs = 1
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 512
	}
	return c
}

// Validate checks the values that do not depend on the host.
func (c Config) Validate() error {
	switch c.Machine {
	case MachineQ35, MachineMicrovm:
	default:
		return fmt.Errorf("hypervisor %s: unknown machine type %q (want %q or %q)", c.ID, c.Machine, MachineQ35, MachineMicrovm)
	}
	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("hypervisor %s: unknown accelerator %q (want auto, kvm or tcg)", c.ID, c.Accel)
	}
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return fmt.Errorf("hypervisor %s: vcpus %d out of range 1-%d", c.ID, c.VCPUs, MaxVCPUs)
	}
	if c.MemoryMiB < 64 {
		return fmt.Errorf("hypervisor %s: memory %d MiB is below 64 MiB", c.ID, c.MemoryMiB)
	}
	if c.MaxVCPUs > MaxVCPUs {
		return fmt.Errorf("hypervisor %s: max vcpus %d out of range 1-%d", c.ID, c.MaxVCPUs, MaxVCPUs)
	}
	if c.TCGTBSizeMiB < 0 {
		return fmt.Errorf("hypervisor %s: negative TCG translation cache size %d MiB", c.ID, c.TCGTBSizeMiB)
	}
	if c.MaxMemoryMiB < 0 {
		return fmt.Errorf("hypervisor %s: negative max memory %d MiB", c.ID, c.MaxMemoryMiB)
	}
	if c.StateDir == "" {
		return fmt.Errorf("hypervisor %s: no state directory", c.ID)
	}
	if c.SharedFS != nil && (c.SharedFS.Socket == "" || c.SharedFS.Tag == "") {
		return fmt.Errorf("hypervisor %s: shared fs needs a socket and a tag", c.ID)
	}
	for i, n := range c.Net {
		if n.Tap == nil && n.TapName == "" {
			return fmt.Errorf("hypervisor %s: NIC %d has no tap", c.ID, i)
		}
		if len(n.MAC) != 6 {
			return fmt.Errorf("hypervisor %s: NIC %d: MAC %q is not a 6-byte address", c.ID, i, n.MAC)
		}
		if n.MTU < 0 || n.MTU > 65535 {
			return fmt.Errorf("hypervisor %s: NIC %d: MTU %d out of range", c.ID, i, n.MTU)
		}
	}
	if c.Vsock != nil && c.Vsock.VhostUserSocket != "" && c.Vsock.HybridSocket != "" {
		return fmt.Errorf("hypervisor %s: vsock has both a vhost-user and a hybrid socket", c.ID)
	}
	if c.Vsock != nil && c.Vsock.VhostUserSocket == "" && c.Vsock.GuestCID < 3 {
		return fmt.Errorf("hypervisor %s: guest CID %d is reserved (want 3 or more)", c.ID, c.Vsock.GuestCID)
	}
	return nil
}

// CheckFiles fails, naming the path, when the VMM binary, the kernel or
// the initrd is missing: before anything is started for the guest.
func (c Config) CheckFiles() error {
	for _, f := range []struct{ what, path string }{
		{"VMM binary", c.Path}, {"kernel", c.Kernel}, {"initrd", c.Initrd},
	} {
		if f.path == "" {
			return fmt.Errorf("hypervisor %s: no %s configured", c.ID, f.what)
		}
		st, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("hypervisor %s: %s: %w", c.ID, f.what, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("hypervisor %s: %s %s is not a regular file", c.ID, f.what, f.path)
		}
	}
	return nil
}

// Hypervisor runs one guest.
type Hypervisor interface {
	// Start launches the VMM and returns once it accepts control commands.
	// ctx bounds the start only, not the guest's life.
	Start(ctx context.Context) error
	// Stop asks the VMM to quit, kills it when ctx ends first, waits for it
	// and removes what Start created. It is safe to call more than once.
	Stop(ctx context.Context) error
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// Err is why the VMM exited (nil for a clean exit); valid after Done.
	Err() error
	// Pid is the VMM's process id, 0 before Start.
	Pid() int
	// Pause and Resume stop and continue the guest's vCPUs.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Resources are a guest's vCPUs and memory.
type Resources struct {
	VCPUs     int
	MemoryMiB int
}

// HotplugSupport says why a machine type cannot add vCPUs and memory to a
// running guest, or nil when it can: q35 has ACPI CPU and memory hot-plug;
// microvm has no ACPI hot-plug controller (nor PCI), so a microvm guest is
// sized once, at boot.
func HotplugSupport(machine string) error {
	switch machine {
	case MachineQ35, "":
		return nil
	case MachineMicrovm:
		return fmt.Errorf("machine type %s cannot hot-plug CPUs or memory (no ACPI hot-plug); VMs are sized at boot only", machine)
	}
	return fmt.Errorf("machine type %q: hot-plug unknown", machine)
}

// Hotplugger is implemented by a driver that can add vCPUs and memory to
// the running guest. Nothing is ever taken away: a guest keeps what it was
// given until it stops.
type Hotplugger interface {
	// Resources is what the guest has now: its boot size plus what was
	// added.
	Resources() Resources
	// MaxResources is the most Grow can reach; equal to Resources when
	// the guest cannot grow.
	MaxResources() Resources
	// Grow adds vCPUs and memory until the guest has at least want (each
	// capped at MaxResources) and returns what it has then, also when it
	// fails part way. Memory may grow by more than asked: it is added in
	// chunks so that the hot-plug slots last up to the maximum. The guest
	// still has to online what was added.
	Grow(ctx context.Context, want Resources) (Resources, error)
}
