package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/configs/validate"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestSysctlPath(t *testing.T) {
	for _, c := range []struct {
		name, path string // path "" means refused
	}{
		{"net.ipv4.ip_unprivileged_port_start", "net/ipv4/ip_unprivileged_port_start"},
		{"net.ipv4.ping_group_range", "net/ipv4/ping_group_range"},
		{"net/ipv4/conf/eth0.100/rp_filter", "net/ipv4/conf/eth0.100/rp_filter"},
		{"net.ipv4.conf.eth0/100.rp_filter", "net/ipv4/conf/eth0.100/rp_filter"},
		{"kernel.shm_rmid_forced", "kernel/shm_rmid_forced"},
		{"fs.mqueue.msg_max", "fs/mqueue/msg_max"},
		{"net.ipv6.conf.veth-a@b:c+d.disable_ipv6", "net/ipv6/conf/veth-a@b:c+d/disable_ipv6"},
		{"", ""},
		{"net..ipv4", ""},
		{"net.ipv4.", ""},
		{".net", ""},
		{"net/../kernel/core_pattern", ""},
		{"net.ipv4.conf./..core_pattern", ""},
		{"net/ipv4/./x", ""},
		{"/net/ipv4", ""},
		{"net.ipv4.x y", ""},
		{"net.ipv4.x\x00", ""},
		{"net.ipv4.x\n", ""},
		{"net.ipv4.é", ""},
		{"net.ipv4.a*", ""},
		{"net." + strings.Repeat("a", maxSysctlName), ""},
	} {
		p, err := sysctlPath(c.name)
		if c.path == "" {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("sysctlPath(%q) = %q, %v; want invalid argument", c.name, p, err)
			} else if c.name != "" && !strings.Contains(err.Error(), "sysctl \"") {
				t.Errorf("sysctlPath(%q): error %q does not name the sysctl", c.name, err)
			}
			continue
		}
		if err != nil || p != c.path {
			t.Errorf("sysctlPath(%q) = %q, %v; want %q", c.name, p, err, c.path)
		}
	}
}

func TestValidateSysctls(t *testing.T) {
	many := map[string]string{}
	for i := 0; i <= maxSysctls; i++ {
		many["net.ipv4.x"+strings.Repeat("a", i%200)+string(rune('a'+i/200))] = "1"
	}
	for _, c := range []struct {
		what    string
		sysctls map[string]string
		ok      bool
	}{
		{"none", nil, true},
		{"containerd 2 defaults", map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}, true},
		{"tab in value", map[string]string{"kernel.sem": "250\t32000\t32\t128"}, true},
		{"empty value", map[string]string{"net.ipv4.ip_forward": ""}, true},
		{"value at the bound", map[string]string{"net.ipv4.ip_forward": strings.Repeat("1", maxSysctlValue)}, true},
		{"value too long", map[string]string{"net.ipv4.ip_forward": strings.Repeat("1", maxSysctlValue+1)}, false},
		{"newline in value", map[string]string{"net.ipv4.ip_forward": "1\n0"}, false},
		{"NUL in value", map[string]string{"net.ipv4.ip_forward": "1\x00"}, false},
		{"escaping name", map[string]string{"net/../../proc/self/x": "1"}, false},
		{"too many", many, false},
	} {
		err := validateSysctls(c.sysctls)
		if c.ok != (err == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Errorf("%s: %v; want ok=%v or invalid argument", c.what, err, c.ok)
		}
	}
}

// TestContainerConfigSysctls checks the spec conversion: net.* sysctls of
// a container without a network namespace of its own (the pod's) leave
// the libcontainer config for the agent, which libcontainer's validation
// then accepts; other namespaced sysctls stay; bad ones name the
// container and the sysctl.
func TestContainerConfigSysctls(t *testing.T) {
	withSysctls := func(netns bool, sysctls map[string]string) []byte {
		return exampleSpec(t, func(s *specs.Spec) {
			s.Linux.Sysctl = sysctls
			var ns []specs.LinuxNamespace
			for _, n := range s.Linux.Namespaces {
				if n.Type != specs.NetworkNamespace || netns {
					ns = append(ns, n)
				}
			}
			s.Linux.Namespaces = ns
		})
	}
	sysctls := map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"net/ipv4/ping_group_range":           "0 2147483647",
		"kernel.shm_rmid_forced":              "1",
		"fs.mqueue.msg_max":                   "20",
	}
	rootfs := t.TempDir()
	cfg, _, err := ContainerConfig("c1", withSysctls(false, sysctls), rootfs, false)
	if err != nil {
		t.Fatal(err)
	}
	net := podSysctls(cfg)
	wantNet := map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net/ipv4/ping_group_range": "0 2147483647"}
	if !equalMaps(net, wantNet) {
		t.Errorf("pod sysctls %v, want %v", net, wantNet)
	}
	if want := map[string]string{"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20"}; !equalMaps(cfg.Sysctl, want) {
		t.Errorf("sysctls left to libcontainer %v, want %v", cfg.Sysctl, want)
	}
	if err := validate.Validate(cfg); err != nil {
		t.Errorf("libcontainer refuses the config: %v", err)
	}

	// With a network namespace of its own, libcontainer sets them inside.
	cfg, _, err = ContainerConfig("c1", withSysctls(true, sysctls), rootfs, false)
	if err != nil {
		t.Fatal(err)
	}
	if net := podSysctls(cfg); net != nil || len(cfg.Sysctl) != len(sysctls) {
		t.Errorf("container with its own netns: pod sysctls %v, config %v; want none and all four", net, cfg.Sysctl)
	}

	for _, bad := range []map[string]string{
		{"net.ipv4.conf./../../kernel/core_pattern": "|/x"},
		{"net.ipv4.ip_forward": strings.Repeat("1", maxSysctlValue+1)},
	} {
		_, _, err := ContainerConfig("c7", withSysctls(false, bad), rootfs, false)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "container c7") || !strings.Contains(err.Error(), "sysctl \"net.ipv4.") {
			t.Errorf("sysctls %.60v: %v; want invalid argument naming container c7 and the sysctl", bad, err)
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestWriteSysctls writes into a stand-in for /proc/sys: values land in
// the files the names map to, a later container's value replaces an
// earlier one, and a sysctl the kernel lacks is an error naming both.
func TestWriteSysctls(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"net/ipv4/ip_unprivileged_port_start", "net/ipv4/ping_group_range", "net/ipv4/conf/eth0.100/rp_filter"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("1024\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	ctx := context.Background()
	set := map[string]podSysctl{}
	err := writeSysctls(ctx, root, "sandbox", map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"net.ipv4.ping_group_range":           "0 2147483647",
		"net.ipv4.conf.eth0/100.rp_filter":    "2",
	}, set)
	if err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{
		"net/ipv4/ip_unprivileged_port_start": "0",
		"net/ipv4/ping_group_range":           "0 2147483647",
		"net/ipv4/conf/eth0.100/rp_filter":    "2",
	} {
		if got := read(f); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	if err := writeSysctls(ctx, root, "app", map[string]string{"net/ipv4/ip_unprivileged_port_start": "80"}, set); err != nil {
		t.Fatal(err)
	}
	if got := read("net/ipv4/ip_unprivileged_port_start"); got != "80" {
		t.Errorf("after the app container: %q, want its 80", got)
	}
	if got := set["net/ipv4/ip_unprivileged_port_start"]; got.container != "app" || got.value != "80" {
		t.Errorf("recorded %+v, want app's 80", got)
	}
	err = writeSysctls(ctx, root, "app2", map[string]string{"net.ipv4.tcp_bogus": "1"}, set)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "container app2") || !strings.Contains(err.Error(), `"net.ipv4.tcp_bogus"`) {
		t.Errorf("unknown sysctl: %v; want invalid argument naming app2 and the sysctl", err)
	}
	if _, err := os.Stat(filepath.Join(root, "net/ipv4/tcp_bogus")); !os.IsNotExist(err) {
		t.Errorf("an unknown sysctl was created: %v", err)
	}
}

// TestApplyPodSysctlsOutsideGuest: host tests have no pod network
// namespace, and the host's own must never be changed.
func TestApplyPodSysctlsOutsideGuest(t *testing.T) {
	s, err := New(Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	err = s.applyPodSysctls(context.Background(), "c1", map[string]string{"net.ipv4.ip_forward": "1"})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "container c1") {
		t.Errorf("outside a guest: %v; want failed precondition naming c1", err)
	}
	if err := s.applyPodSysctls(context.Background(), "c1", nil); err != nil {
		t.Errorf("no sysctls: %v", err)
	}
}

// TestSysfsForUserNamespace: a user-namespaced container in the pod's
// network namespace binds the guest's /sys read-only; others keep sysfs.
func TestSysfsForUserNamespace(t *testing.T) {
	rootfs := t.TempDir()
	mk := func(userns, netns bool) []byte {
		return exampleSpec(t, func(s *specs.Spec) {
			var ns []specs.LinuxNamespace
			for _, n := range s.Linux.Namespaces {
				if n.Type != specs.NetworkNamespace && n.Type != specs.UserNamespace {
					ns = append(ns, n)
				}
			}
			if userns {
				ns = append(ns, specs.LinuxNamespace{Type: specs.UserNamespace})
				s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
				s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
			}
			if netns {
				ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace})
			}
			s.Linux.Namespaces = ns
		})
	}
	for _, c := range []struct {
		userns, netns, bind bool
	}{
		{userns: true, netns: false, bind: true},
		{userns: true, netns: true, bind: false},
		{userns: false, netns: false, bind: false},
	} {
		_, spec, err := ContainerConfig("c1", mk(c.userns, c.netns), rootfs, false)
		if err != nil {
			t.Fatalf("userns %v netns %v: %v", c.userns, c.netns, err)
		}
		var sys *specs.Mount
		for i := range spec.Mounts {
			if spec.Mounts[i].Destination == "/sys" {
				sys = &spec.Mounts[i]
			}
		}
		if sys == nil {
			t.Fatalf("userns %v netns %v: /sys mount gone", c.userns, c.netns)
		}
		gotBind := sys.Type == "bind" && sys.Source == "/sys" && hasOpt(sys.Options, "rbind") && hasOpt(sys.Options, "rro")
		if gotBind != c.bind || (!c.bind && sys.Type != "sysfs") {
			t.Errorf("userns %v netns %v: /sys is %+v; want the guest's bound read-only: %v", c.userns, c.netns, *sys, c.bind)
		}
	}
}

func hasOpt(opts []string, o string) bool {
	for _, v := range opts {
		if v == o {
			return true
		}
	}
	return false
}

// FuzzSysctlPath: whatever the name, an accepted one maps to a clean
// relative path below /proc/sys, and a value that passes validation fits
// one write.
func FuzzSysctlPath(f *testing.F) {
	f.Add("net.ipv4.ping_group_range", "0 2147483647")
	f.Add("net/ipv4/conf/eth0.100/rp_filter", "1")
	f.Add("net.ipv4.conf.eth0/100.rp_filter", "2")
	f.Add("net/../kernel/core_pattern", "|/x")
	f.Fuzz(func(t *testing.T, name, value string) {
		p, err := sysctlPath(name)
		if err != nil {
			return
		}
		if p == "" || filepath.IsAbs(p) || filepath.Clean(p) != p || strings.HasPrefix(p, "..") {
			t.Fatalf("sysctlPath(%q) = %q: not a clean relative path", name, p)
		}
		for _, level := range strings.Split(p, "/") {
			if level == "." || level == ".." {
				t.Fatalf("sysctlPath(%q) = %q has level %q", name, p, level)
			}
		}
		if !filepath.IsLocal(p) {
			t.Fatalf("sysctlPath(%q) = %q escapes", name, p)
		}
		if isNetSysctl(name) != strings.HasPrefix(filepath.Join(guestProcSys, p), guestProcSys+"/net/") {
			t.Fatalf("isNetSysctl(%q) disagrees with path %q", name, p)
		}
		if validateSysctls(map[string]string{name: value}) == nil && (len(value) > maxSysctlValue || strings.ContainsAny(value, "\n\x00")) {
			t.Fatalf("value %q accepted", value)
		}
	})
}
