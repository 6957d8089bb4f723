package qemu

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/hypervisor"
)

// argAfter returns every value following flag in args.
func argsAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func baseConfig() hypervisor.Config {
	return hypervisor.Config{ID: "pod1", Kernel: "/k", Initrd: "/i", StateDir: "/run/s"}.WithDefaults()
}

func TestArgsQ35VhostUser(t *testing.T) {
	cfg := baseConfig()
	cfg.MemoryMiB = 256
	cfg.VCPUs = 2
	cfg.KernelParams = []string{"vmpod.debug=1"}
	cfg.Vsock = &hypervisor.Vsock{VhostUserSocket: "/run/s/vsock.sock"}
	cfg.SharedFS = &hypervisor.SharedFS{Socket: "/run/s/fs.sock", Tag: "vmpod"}
	cfg.ExtraArgs = []string{"-S"}
	a := commandLine{cfg: cfg, accel: hypervisor.AccelTCG, tscKHz: 2600000, qmpSocket: "/run/s/qmp.sock"}.args()

	check := func(flag string, want ...string) {
		t.Helper()
		if got := argsAfter(a, flag); !slices.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", flag, got, want)
		}
	}
	check("-machine", "q35,memory-backend=mem")
	check("-accel", "tcg")
	check("-m", "256M")
	check("-smp", "2")
	check("-object", "memory-backend-memfd,id=mem,size=256M,share=on")
	check("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny")
	check("-kernel", "/k")
	check("-initrd", "/i")
	check("-append", "console=ttyS0 panic=-1 reboot=k quiet no_timer_check swiotlb=noforce vmpod.debug=1")
	check("-qmp", "unix:/run/s/qmp.sock,server=on,wait=off")
	check("-device", "vhost-user-vsock-pci,chardev=vsock", "vhost-user-fs-pci,chardev=fs,tag=vmpod")
	check("-chardev", "stdio,id=console,signal=off", "socket,id=vsock,path=/run/s/vsock.sock", "socket,id=fs,path=/run/s/fs.sock")
	check("-cpu")
	for _, f := range []string{"-nodefaults", "-no-user-config", "-no-reboot"} {
		if !slices.Contains(a, f) {
			t.Errorf("missing %s", f)
		}
	}
	if a[len(a)-1] != "-S" {
		t.Errorf("extra args not last: %q", a)
	}
}

func TestArgsMicrovmKernelVsock(t *testing.T) {
	cfg := baseConfig()
	cfg.Machine = hypervisor.MachineMicrovm
	cfg.Vsock = &hypervisor.Vsock{GuestCID: 42}
	a := commandLine{cfg: cfg, accel: hypervisor.AccelKVM, tscKHz: 2600000, qmpSocket: "/q", vhostFD: 3}.args()
	if got := argsAfter(a, "-machine"); !slices.Equal(got, []string{"microvm"}) {
		t.Errorf("-machine %q: no memfd backend is needed for kernel vhost-vsock", got)
	}
	if got := argsAfter(a, "-object"); len(got) != 0 {
		t.Errorf("-object %q", got)
	}
	if got := argsAfter(a, "-device"); !slices.Equal(got, []string{"vhost-vsock-device,guest-cid=42,vhostfd=3"}) {
		t.Errorf("-device %q", got)
	}
	if got := argsAfter(a, "-cpu"); !slices.Equal(got, []string{"host"}) {
		t.Errorf("-cpu %q under KVM", got)
	}
	// virtiofsd (libvhost-user) refuses a legacy virtio device.
	if got := argsAfter(a, "-global"); !slices.Equal(got, []string{"virtio-mmio.force-legacy=false"}) {
		t.Errorf("microvm -global %q, want modern virtio-mmio", got)
	}
	if app := argsAfter(a, "-append")[0]; !strings.Contains(app, "tsc_early_khz=2600000") {
		t.Errorf("microvm command line lacks tsc_early_khz: %q", app)
	}
	cfg.SharedFS = &hypervisor.SharedFS{Socket: "/fs", Tag: "t"}
	a = commandLine{cfg: cfg, accel: hypervisor.AccelTCG, qmpSocket: "/q"}.args()
	if got := argsAfter(a, "-device"); !slices.Contains(got, "vhost-user-fs-device,chardev=fs,tag=t") {
		t.Errorf("-device %q", got)
	}
	if app := argsAfter(a, "-append")[0]; strings.Contains(app, "tsc_early_khz") {
		t.Errorf("tsc_early_khz without a known TSC rate: %q", app)
	}
}

func TestArgsQ35NoTSC(t *testing.T) {
	a := commandLine{cfg: baseConfig(), accel: hypervisor.AccelTCG, tscKHz: 2600000, qmpSocket: "/q"}.args()
	if app := argsAfter(a, "-append")[0]; strings.Contains(app, "tsc_early_khz") {
		t.Errorf("q35 does not need tsc_early_khz: %q", app)
	}
	if got := argsAfter(a, "-device"); len(got) != 0 {
		t.Errorf("devices without any configured: %q", got)
	}
	if got := argsAfter(a, "-global"); len(got) != 0 {
		t.Errorf("q35 -global %q: virtio-mmio is microvm's", got)
	}
}

func TestArgsNet(t *testing.T) {
	for _, m := range []struct{ machine, nic string }{
		{hypervisor.MachineQ35, "virtio-net-pci"},
		{hypervisor.MachineMicrovm, "virtio-net-device"},
	} {
		cfg := baseConfig()
		cfg.Machine = m.machine
		cfg.Net = []hypervisor.NetDevice{
			{MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, MTU: 1450},
			{MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 2}},
		}
		a := commandLine{cfg: cfg, accel: hypervisor.AccelTCG, qmpSocket: "/q", tapFDs: []int{4, 5}}.args()
		if got, want := argsAfter(a, "-netdev"), []string{"tap,id=net0,fd=4,vhost=off", "tap,id=net1,fd=5,vhost=off"}; !slices.Equal(got, want) {
			t.Errorf("%s -netdev %q, want %q", m.machine, got, want)
		}
		want := []string{m.nic + ",netdev=net0,mac=02:00:00:00:00:01,host_mtu=1450", m.nic + ",netdev=net1,mac=02:00:00:00:00:02"}
		if got := argsAfter(a, "-device"); !slices.Equal(got, want) {
			t.Errorf("%s -device %q, want %q", m.machine, got, want)
		}
	}
}

func TestArgsJail(t *testing.T) {
	cfg := baseConfig()
	cfg.ExtraArgs = []string{"-S"}
	unjailed := commandLine{cfg: cfg, accel: hypervisor.AccelTCG, qmpSocket: "/q"}.args()
	for _, f := range []string{"-chroot", "-runas"} {
		if got := argsAfter(unjailed, f); len(got) != 0 {
			t.Errorf("unjailed: %s %q", f, got)
		}
	}
	if got := argsAfter(unjailed, "-sandbox"); !slices.Equal(got, []string{"on,obsolete=deny,elevateprivileges=deny,spawn=deny"}) {
		t.Errorf("unjailed -sandbox %q", got)
	}

	j := &Jail{Dir: "/run/s/root", UID: 1879048193, GID: 1879048194}
	a := commandLine{cfg: cfg, accel: hypervisor.AccelTCG, qmpSocket: "/q", jail: j}.args()
	check := func(flag string, want ...string) {
		t.Helper()
		if got := argsAfter(a, flag); !slices.Equal(got, want) {
			t.Errorf("jailed %s: got %q, want %q", flag, got, want)
		}
	}
	check("-chroot", "/run/s/root")
	check("-runas", "1879048193:1879048194")
	// QEMU calls setgid/setuid itself: elevateprivileges=deny would kill it.
	check("-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny")
	if a[len(a)-1] != "-S" {
		t.Errorf("extra args not last: %q", a)
	}
}

func TestJailValidation(t *testing.T) {
	for _, c := range []struct {
		j    Jail
		want string
	}{
		{Jail{Dir: "", UID: 5, GID: 5}, "not an absolute path"},
		{Jail{Dir: "run/root", UID: 5, GID: 5}, "run/root"},
		{Jail{Dir: "/run/root", UID: 0, GID: 5}, "0:5 would keep root"},
		{Jail{Dir: "/run/root", UID: 5, GID: 0}, "5:0 would keep root"},
	} {
		_, err := New(baseConfig(), WithJail(c.j))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "pod1") {
			t.Errorf("%+v: error %v, want one naming pod1 and containing %q", c.j, err, c.want)
		}
	}
	if _, err := New(baseConfig(), WithJail(Jail{Dir: "/run/root", UID: 5, GID: 5})); err != nil {
		t.Errorf("valid jail refused: %v", err)
	}
}

// TestNewRefusesCHOnlyDevices: a tap by name and hybrid vsock are Cloud
// Hypervisor's; QEMU needs descriptors and has no hybrid vsock.
func TestNewRefusesCHOnlyDevices(t *testing.T) {
	base := hypervisor.Config{ID: "x", StateDir: "/run/x"}
	byName := base
	byName.Net = []hypervisor.NetDevice{{TapName: "tap0", MAC: make(net.HardwareAddr, 6)}}
	if _, err := New(byName); err == nil || !strings.Contains(err.Error(), "descriptor") {
		t.Errorf("tap by name: %v", err)
	}
	hybrid := base
	hybrid.Vsock = &hypervisor.Vsock{GuestCID: 3, HybridSocket: "/run/x/v.sock"}
	if _, err := New(hybrid); err == nil || !strings.Contains(err.Error(), "hybrid") {
		t.Errorf("hybrid vsock: %v", err)
	}
}

// TestArgsFreePageReporting: the balloon device on both machine types,
// and none unless asked for.
func TestArgsFreePageReporting(t *testing.T) {
	for _, tc := range []struct {
		machine string
		on      bool
		want    []string
	}{
		{hypervisor.MachineQ35, true, []string{"virtio-balloon-pci,free-page-reporting=on"}},
		{hypervisor.MachineMicrovm, true, []string{"virtio-balloon-device,free-page-reporting=on"}},
		{hypervisor.MachineQ35, false, nil},
	} {
		cfg := baseConfig()
		cfg.Machine = tc.machine
		cfg.FreePageReporting = tc.on
		a := commandLine{cfg: cfg, accel: hypervisor.AccelTCG, qmpSocket: "/q"}.args()
		var got []string
		for _, d := range argsAfter(a, "-device") {
			if strings.Contains(d, "balloon") {
				got = append(got, d)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s, free page reporting %v: balloon devices %q, want %q", tc.machine, tc.on, got, tc.want)
		}
	}
}

// TestArgsTBSize: tb-size bounds the translation cache under TCG only.
func TestArgsTBSize(t *testing.T) {
	for _, tc := range []struct {
		accel string
		size  int
		want  string
	}{
		{hypervisor.AccelTCG, 32, "tcg,tb-size=32"},
		{hypervisor.AccelTCG, 0, "tcg"},
		{hypervisor.AccelKVM, 32, "kvm"},
	} {
		cfg := baseConfig()
		cfg.TCGTBSizeMiB = tc.size
		a := commandLine{cfg: cfg, accel: tc.accel, qmpSocket: "/q"}.args()
		if got := argsAfter(a, "-accel"); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("%s, tb size %d: -accel %q, want %q", tc.accel, tc.size, got, tc.want)
		}
	}
}
