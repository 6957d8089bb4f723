package hypervisor

import (
	"net"
	"os"
	"strings"
	"testing"
)

func TestChooseAccel(t *testing.T) {
	cases := []struct {
		req        string
		host       Host
		want       string
		wantErr    bool
		reasonPart string
	}{
		{AccelAuto, Host{KVMUsable: true, HWVirt: true}, AccelKVM, false, "hardware"},
		{AccelAuto, Host{KVMUsable: true, HWVirt: false}, AccelTCG, false, "vmx"},
		{AccelAuto, Host{KVMUsable: false, HWVirt: true}, AccelTCG, false, "/dev/kvm"},
		{"", Host{}, AccelTCG, false, "/dev/kvm"},
		{AccelTCG, Host{KVMUsable: true, HWVirt: true}, AccelTCG, false, "configured"},
		{AccelKVM, Host{KVMUsable: true}, AccelKVM, false, "configured"},
		{AccelKVM, Host{}, "", true, ""},
		{"hvf", Host{}, "", true, ""},
	}
	for _, c := range cases {
		got, reason, err := ChooseAccel(c.req, c.host)
		if (err != nil) != c.wantErr || got != c.want || !strings.Contains(reason, c.reasonPart) {
			t.Errorf("ChooseAccel(%q, %+v) = %q, %q, %v; want %q (reason with %q), err %v",
				c.req, c.host, got, reason, err, c.want, c.reasonPart, c.wantErr)
		}
	}
}

const cpuinfoNoVirt = `processor	: 0
vendor_id	: GenuineIntel
cpu MHz		: 2599.998
flags		: fpu vme de pse tsc msr hypervisor lahf_lm
processor	: 1
cpu MHz		: 1200.000
flags		: fpu vmx
`

func TestParseCPUInfo(t *testing.T) {
	hw, khz := parseCPUInfo(cpuinfoNoVirt)
	if hw || khz != 2599998 {
		t.Errorf("got hwvirt=%v tsc=%d, want false 2599998 (first processor only)", hw, khz)
	}
	hw, _ = parseCPUInfo("flags : fpu svm\n")
	if !hw {
		t.Error("svm not recognised")
	}
	hw, khz = parseCPUInfo("garbage\ncpu MHz : lots\n")
	if hw || khz != 0 {
		t.Errorf("garbage gave %v %d", hw, khz)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{ID: "x", StateDir: "/run/x"}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if good.Machine != MachineQ35 || good.Accel != AccelAuto || good.VCPUs != 1 || good.MemoryMiB != 512 {
		t.Errorf("defaults: %+v", good)
	}
	bad := []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Machine = "pc-i440fx" }, "pc-i440fx"},
		{func(c *Config) { c.Accel = "hvf" }, "hvf"},
		{func(c *Config) { c.VCPUs = 0 }, "vcpus"},
		{func(c *Config) { c.MemoryMiB = 16 }, "memory"},
		{func(c *Config) { c.StateDir = "" }, "state directory"},
		{func(c *Config) { c.SharedFS = &SharedFS{Socket: "/s"} }, "tag"},
		{func(c *Config) { c.Vsock = &Vsock{GuestCID: 2} }, "CID 2"},
		{func(c *Config) { c.Net = []NetDevice{{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}} }, "no tap"},
		{func(c *Config) { c.Net = []NetDevice{{Tap: os.Stdin, MAC: net.HardwareAddr{2}}} }, "6-byte"},
		{func(c *Config) { c.TCGTBSizeMiB = -1 }, "translation cache"},
	}
	for _, b := range bad {
		c := good
		b.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("error %v, want one containing %q", err, b.want)
		}
	}
}
