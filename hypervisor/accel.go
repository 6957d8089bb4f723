package hypervisor

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Host describes what the host offers a VMM; HostInfo fills it from the
// running system, tests fill it by hand.
type Host struct {
	// KVMUsable: /dev/kvm opens for reading and writing.
	KVMUsable bool
	// HWVirt: the CPU flags show vmx or svm. Without them /dev/kvm may be a
	// nested paravirtual device on which stock guests die.
	HWVirt bool
	// TSCkHz is the host's TSC frequency, 0 when unknown.
	TSCkHz uint64
}

// HostInfo inspects /dev/kvm, /proc/cpuinfo and sysfs.
func HostInfo() Host {
	var h Host
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		h.KVMUsable = true
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		h.HWVirt, h.TSCkHz = parseCPUInfo(string(b))
	}
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			h.TSCkHz = v
		}
	}
	return h
}

// parseCPUInfo reads the first processor's flags and clock from
// /proc/cpuinfo. "cpu MHz" is the TSC rate on x86 when the TSC is
// invariant, close enough for tsc_early_khz.
func parseCPUInfo(s string) (hwvirt bool, tscKHz uint64) {
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var sawFlags, sawMHz bool
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "flags":
			if sawFlags {
				continue
			}
			sawFlags = true
			for _, f := range strings.Fields(val) {
				if f == "vmx" || f == "svm" {
					hwvirt = true
				}
			}
		case "cpu MHz":
			if sawMHz {
				continue
			}
			sawMHz = true
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil && mhz > 0 {
				tscKHz = uint64(mhz*1000 + 0.5)
			}
		}
	}
	return hwvirt, tscKHz
}

// ChooseAccel resolves the configured accelerator for host. Auto picks KVM
// only when /dev/kvm works and the CPU has hardware virtualization; the
// reason says why, for the log.
func ChooseAccel(requested string, host Host) (accel, reason string, err error) {
	switch requested {
	case AccelTCG:
		return AccelTCG, "configured", nil
	case AccelKVM:
		if !host.KVMUsable {
			return "", "", fmt.Errorf("accel kvm: /dev/kvm cannot be opened")
		}
		return AccelKVM, "configured", nil
	case "", AccelAuto:
		switch {
		case !host.KVMUsable:
			return AccelTCG, "/dev/kvm cannot be opened", nil
		case !host.HWVirt:
			return AccelTCG, "the CPU flags show neither vmx nor svm (nested or paravirtual /dev/kvm)", nil
		}
		return AccelKVM, "/dev/kvm works and the CPU has hardware virtualization", nil
	}
	return "", "", fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", requested)
}
