package integration

import (
	"strings"
	"testing"
)

// TestGuestModules: the guest loads a kernel module when the kernel asks
// for it, as a host does through modprobe (critest's "should support
// Privileged is true" and "should support adding capability" run `brctl
// addbr`). In a privileged container, `brctl addbr` (the kernel asks for
// "bridge"), `ip link add type veth` (for "rtnl-link-veth"), a VLAN
// ("rtnl-link-vlan") and a VXLAN ("rtnl-link-vxlan") succeed, and the
// guest's /proc/modules then lists those modules and their dependencies,
// none of which were loaded at boot. On a guest kernel with those built in
// and no module support (vmpod's own, make kernel) the same devices are
// made and the module assertions do not apply: there is no /proc/modules
// and no module helper. A container of the same VM without CAP_NET_ADMIN
// is refused, as with runc. One VM.
func TestGuestModules(t *testing.T) {
	e := newVMPodEnv(t, "")
	const priv, plain = "modules-priv", "modules-plain"
	// image.DefaultOnDemand with their dependencies.
	onDemand := []string{"bridge", "stp", "llc", "veth", "8021q", "garp", "mrp", "vxlan", "udp_tunnel", "ip6_udp_tunnel"}
	e.runDetached(priv, []string{"--privileged"}, "sleep", "600")
	exec := func(id, execID string, args ...string) (string, string, error) {
		t.Helper()
		return e.ctrErr(append([]string{"task", "exec", "--exec-id", execID, id}, args...)...)
	}
	must := func(id, execID string, args ...string) string {
		t.Helper()
		out, stderr, err := exec(id, execID, args...)
		if err != nil {
			t.Fatalf("%s in %s: %v\n%s%s", strings.Join(args, " "), id, err, out, stderr)
		}
		return out
	}
	loaded := func(execID string) map[string]bool {
		t.Helper()
		mods := map[string]bool{}
		for _, line := range strings.Split(must(priv, execID, "cat", "/proc/modules"), "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				mods[f[0]] = true
			}
		}
		return mods
	}

	// A kernel without module support has neither /proc/modules nor the
	// helper setting; then the devices below must work built in.
	_, _, noProcModules := exec(priv, "has-modules", "test", "-e", "/proc/modules")
	modular := noProcModules == nil
	if _, _, err := exec(priv, "has-helper", "test", "-e", "/proc/sys/kernel/modprobe"); (err == nil) != modular {
		t.Fatalf("guest has /proc/modules: %v, but /proc/sys/kernel/modprobe: %v", modular, err == nil)
	}
	if !modular {
		t.Log("guest kernel without module support: bridge, veth, VLAN and VXLAN must be built in")
	}
	if modular {
		if h := strings.TrimSpace(must(priv, "helper", "cat", "/proc/sys/kernel/modprobe")); h != "/sbin/modprobe" {
			t.Errorf("the guest's module helper is %q, want /sbin/modprobe", h)
		}
		before := loaded("modules-before")
		if !before["vsock"] || !before["overlay"] {
			t.Errorf("boot modules missing from the guest's /proc/modules: %v", before)
		}
		for _, m := range onDemand {
			if before[m] {
				t.Errorf("%s loaded at boot; it should load on demand", m)
			}
		}
	}

	must(priv, "addbr", "brctl", "addbr", "foobar")
	must(priv, "addveth", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	must(priv, "addvlan", "ip", "link", "add", "link", "v0", "name", "v0.5", "type", "vlan", "id", "5")
	must(priv, "addvxlan", "ip", "link", "add", "vx0", "type", "vxlan", "id", "42")
	links := must(priv, "links", "ip", "-o", "link", "show")
	for _, l := range []string{"foobar:", "v0@", "v0.5@v0:", "vx0:"} {
		if !strings.Contains(links, l) {
			t.Errorf("no %s link after it was added:\n%s", strings.TrimRight(l, ":@"), links)
		}
	}
	if modular {
		after := loaded("modules-after")
		for _, m := range onDemand {
			if !after[m] {
				t.Errorf("%s not in the guest's /proc/modules after use: %v", m, after)
			}
		}
	}

	// A container of the same pod (VM), without CAP_NET_ADMIN: refused
	// with EPERM, though the modules are there.
	e.runDetached(plain, []string{
		"--annotation", "io.kubernetes.cri.container-type=container",
		"--annotation", "io.kubernetes.cri.sandbox-id=" + priv,
	}, "sleep", "600")
	bootPriv := must(priv, "boot-priv", "cat", "/proc/sys/kernel/random/boot_id")
	if bootPlain := must(plain, "boot-plain", "cat", "/proc/sys/kernel/random/boot_id"); bootPlain != bootPriv {
		t.Fatalf("the two containers run in different guests (boot ids %q, %q)", bootPriv, bootPlain)
	}
	for _, args := range [][]string{
		{"brctl", "addbr", "foobar2"},
		{"ip", "link", "add", "v2", "type", "veth", "peer", "name", "v3"},
	} {
		out, stderr, err := exec(plain, "denied-"+args[0], args...)
		if err == nil {
			t.Errorf("%s without CAP_NET_ADMIN succeeded: %s", strings.Join(args, " "), out)
		} else if !strings.Contains(out+stderr, "not permitted") {
			t.Errorf("%s without CAP_NET_ADMIN: %v, output %q; want EPERM", strings.Join(args, " "), err, out+stderr)
		}
	}

	for _, id := range []string{plain, priv} {
		e.ctr("task", "kill", "-s", "SIGKILL", id)
		e.waitStatus(id, "STOPPED")
		e.ctr("task", "delete", id)
		e.ctr("containers", "delete", id)
	}
	e.c.AssertClean(t)
}
