package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

func exampleSpec(t testing.TB, edit func(*specs.Spec)) []byte {
	s := specconv.Example()
	s.Process.Terminal = false
	if edit != nil {
		edit(s)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestContainerConfig(t *testing.T) {
	b := exampleSpec(t, func(s *specs.Spec) {
		s.Root = &specs.Root{Path: "ignored", Readonly: true}
		s.Process.Env = []string{"A=b"}
	})
	cfg, spec, err := ContainerConfig("c1", b, "/run/rootfs", false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rootfs != "/run/rootfs" || !cfg.Readonlyfs {
		t.Errorf("rootfs %q readonly %v: the request's path must replace root.path and keep readonly", cfg.Rootfs, cfg.Readonlyfs)
	}
	if cfg.Cgroups.Path != "/vmpod/c1" {
		t.Errorf("default cgroups path %q, want /vmpod/c1", cfg.Cgroups.Path)
	}
	if spec.Process.Env[0] != "A=b" {
		t.Errorf("process env lost: %v", spec.Process.Env)
	}

	if cfg, _, err = ContainerConfig("c1", exampleSpec(t, nil), "/r", true); err != nil || !cfg.NoPivotRoot {
		t.Errorf("no pivot_root: %v", err)
	}

	b = exampleSpec(t, func(s *specs.Spec) { s.Linux.CgroupsPath = "/pods/x/c1" })
	if cfg, _, err = ContainerConfig("c1", b, "/r", false); err != nil || cfg.Cgroups.Path != "/pods/x/c1" {
		t.Errorf("explicit cgroups path: %v %v", cfg, err)
	}
	for _, p := range []string{"rel/c1", "kubepods.slice:cri-containerd:c1"} {
		b = exampleSpec(t, func(s *specs.Spec) { s.Linux.CgroupsPath = p })
		if cfg, _, err = ContainerConfig("c1", b, "/r", false); err != nil || cfg.Cgroups.Path != "/vmpod/c1" {
			t.Errorf("cgroups path %q: got %v %v, want the default", p, cfg.Cgroups.Path, err)
		}
	}
}

func TestContainerConfigRejects(t *testing.T) {
	good := exampleSpec(t, nil)
	for _, c := range []struct {
		name, id, rootfs string
		spec             []byte
	}{
		{"empty spec", "c", "/r", nil},
		{"invalid JSON", "c", "/r", []byte("{")},
		{"oversize", "c", "/r", append(append([]byte{}, good...), make([]byte, MaxSpecSize)...)},
		{"no process", "c", "/r", exampleSpec(t, func(s *specs.Spec) { s.Process = nil })},
		{"no args", "c", "/r", exampleSpec(t, func(s *specs.Spec) { s.Process.Args = nil })},
		{"relative cwd", "c", "/r", exampleSpec(t, func(s *specs.Spec) { s.Process.Cwd = "x" })},
		{"bad rlimit", "c", "/r", exampleSpec(t, func(s *specs.Spec) { s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_BOGUS"}} })},
		{"unknown namespace", "c", "/r", exampleSpec(t, func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "bogus"})
		})},
		{"bad id", "-c", "/r", good},
		{"relative rootfs", "c", "r", good},
		{"escaping rootfs", "c", "/r/../etc", good},
		{"unclean rootfs", "c", "/r/", good},
	} {
		_, _, err := ContainerConfig(c.id, c.spec, c.rootfs, false)
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: got %v, want invalid argument", c.name, err)
		}
	}
}

func TestNewProcess(t *testing.T) {
	p := &specs.Process{
		Args: []string{"id"}, Cwd: "/",
		User:         specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{5, 6}},
		Rlimits:      []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 10, Soft: 5}},
		Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}},
		ConsoleSize:  &specs.Box{Height: 40, Width: 100},
	}
	lp, err := newProcess(p)
	if err != nil {
		t.Fatal(err)
	}
	if lp.UID != 1000 || lp.GID != 1001 || len(lp.AdditionalGroups) != 2 || lp.AdditionalGroups[1] != 6 {
		t.Errorf("user: %d %d %v", lp.UID, lp.GID, lp.AdditionalGroups)
	}
	if len(lp.Rlimits) != 1 || lp.Rlimits[0].Type != unix.RLIMIT_NOFILE || lp.Rlimits[0].Soft != 5 {
		t.Errorf("rlimits: %+v", lp.Rlimits)
	}
	if lp.Capabilities == nil || lp.Capabilities.Bounding[0] != "CAP_KILL" {
		t.Errorf("capabilities: %+v", lp.Capabilities)
	}
	if lp.ConsoleHeight != 40 || lp.ConsoleWidth != 100 {
		t.Errorf("console size %dx%d", lp.ConsoleHeight, lp.ConsoleWidth)
	}
}

func TestDecodeProcess(t *testing.T) {
	if _, err := DecodeProcess([]byte(`{"args":["sh"],"cwd":"/"}`)); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{``, `{`, `{"args":["sh"]}`, `{"cwd":"/"}`, `[]`} {
		if _, err := DecodeProcess([]byte(b)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: got %v, want invalid argument", b, err)
		}
	}
}

func TestDecodeResources(t *testing.T) {
	r, err := DecodeResources([]byte(`{"memory":{"limit":1048576},"pids":{"limit":10},"cpu":{"shares":512,"cpus":"0"}}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := ContainerConfig("c", exampleSpec(t, nil), "/r", false)
	if err != nil {
		t.Fatal(err)
	}
	res := *cfg.Cgroups.Resources
	applyResources(&res, r)
	if res.Memory != 1<<20 || *res.PidsLimit != 10 || res.CpuShares != 512 || res.CpusetCpus != "0" {
		t.Errorf("applied: memory %d pids %v shares %d cpus %q", res.Memory, res.PidsLimit, res.CpuShares, res.CpusetCpus)
	}
	if len(res.Devices) != len(cfg.Cgroups.Resources.Devices) {
		t.Error("device rules changed by an update")
	}
	if _, err := DecodeResources([]byte(`{"devices":[{"allow":true}]}`)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("device update: %v", err)
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "abc-1.2_3", strings.Repeat("a", 128)} {
		if err := validateID("id", id); err != nil {
			t.Errorf("%q rejected: %v", id, err)
		}
	}
	for _, id := range []string{"", "-a", ".a", "a/b", "..", "a b", strings.Repeat("a", 129), "a\x00"} {
		if err := validateID("id", id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q accepted", id)
		}
	}
	if err := validateExecID(""); err != nil {
		t.Errorf("empty exec id (init) rejected: %v", err)
	}
}

func TestValidateGuestPath(t *testing.T) {
	for _, p := range []string{"/", "/run/a", "/a..b"} {
		if err := validateGuestPath("p", p); err != nil {
			t.Errorf("%q rejected: %v", p, err)
		}
	}
	for _, p := range []string{"", "a", "/a/../b", "/a/", "/a//b", "/a/.", "/a\x00"} {
		if err := validateGuestPath("p", p); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q accepted", p)
		}
	}
}

func TestExitStatus(t *testing.T) {
	// WaitStatus encodings: exit code in bits 8-15; a signal in bits 0-6.
	for _, c := range []struct {
		ws   unix.WaitStatus
		want int
	}{
		{0, 0},
		{3 << 8, 3},
		{255 << 8, 255},
		{unix.WaitStatus(unix.SIGKILL), 137},
		{unix.WaitStatus(unix.SIGTERM), 143},
		{unix.WaitStatus(unix.SIGSEGV) | 0x80, 139}, // core dumped
	} {
		if got := exitStatus(c.ws); got != c.want {
			t.Errorf("status %#x: got %d, want %d", uint32(c.ws), got, c.want)
		}
	}
	if got := processExitStatus(nil); got != 255 {
		t.Errorf("no process state: %d, want 255", got)
	}
}

func TestParseMount(t *testing.T) {
	ms, err := ParseMount(&agentpb.Mount{Type: "tmpfs", Source: "tmpfs", Target: "/run/x", Options: []string{"ro", "nosuid", "size=10m", "rw", "rshared", "mode=755"}})
	if err != nil {
		t.Fatal(err)
	}
	if ms.Flags != unix.MS_NOSUID || ms.Data != "size=10m,mode=755" || ms.Propagation != unix.MS_SHARED|unix.MS_REC {
		t.Errorf("parsed %+v", ms)
	}
	ms, err = ParseMount(&agentpb.Mount{Source: "/a", Target: "/b", Options: []string{"rbind", "ro"}})
	if err != nil || ms.Flags != unix.MS_BIND|unix.MS_REC|unix.MS_RDONLY {
		t.Errorf("bind: %+v %v", ms, err)
	}
	for _, m := range []*agentpb.Mount{
		nil,
		{Type: "tmpfs", Target: "rel"},
		{Type: "tmpfs", Target: "/a/../b"},
		{Target: "/a"}, // no type, no bind
		{Type: "tmpfs", Target: "/a", Options: []string{"a,b"}},
		{Type: "tmpfs", Target: "/a", Options: []string{""}},
		{Type: "tmpfs", Target: "/a", Options: make([]string, maxMountOptions+1)},
	} {
		if _, err := ParseMount(m); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v accepted", m)
		}
	}
	if _, err := ParseMounts(make([]*agentpb.Mount, maxMounts+1)); !errdefs.IsInvalidArgument(err) {
		t.Error("too many mounts accepted")
	}
}

func TestResolvConf(t *testing.T) {
	b, err := resolvConf(&agentpb.DNS{Nameservers: []string{"10.0.0.1", "fd00::1"}, Searches: []string{"svc.local", "local"}, Options: []string{"ndots:5"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "nameserver 10.0.0.1\nnameserver fd00::1\nsearch svc.local local\noptions ndots:5\n"
	if string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
	for _, d := range []*agentpb.DNS{
		{Nameservers: []string{"example.com"}},
		{Nameservers: []string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"}},
		{Searches: []string{"a b"}},
		{Options: []string{"x\nnameserver 6.6.6.6"}},
	} {
		if _, err := resolvConf(d); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v accepted", d)
		}
	}
}

func TestValidateHostname(t *testing.T) {
	for _, h := range []string{"a", "pod-1.example", strings.Repeat("a", 63)} {
		if err := validateHostname(h); err != nil {
			t.Errorf("%q rejected", h)
		}
	}
	for _, h := range []string{"", "-a", "a b", "a\n", strings.Repeat("a", 65)} {
		if err := validateHostname(h); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q accepted", h)
		}
	}
}
