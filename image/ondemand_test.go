package image

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/kmod"
)

const onDemandDep = fakeDep + `kernel/n/bridge.ko: kernel/n/stp.ko kernel/n/llc.ko
kernel/n/stp.ko: kernel/n/llc.ko
kernel/n/llc.ko:
kernel/n/veth.ko:
kernel/n/8021q.ko: kernel/n/stp.ko kernel/n/llc.ko
`

const onDemandAlias = `# Aliases extracted from modules themselves.
alias rtnl-link-bridge bridge
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias net-pf-40 vsock
alias rtnl-link-veth veth
alias rtnl-link-bridge veth
alias bridge veth
alias fs-unused unused
alias rtnl-link-vlan 8021q
`

// buildOnDemand builds an image of the fake tree with vsock's transport at
// boot and onDemand on demand, and returns the result and the archive's
// entries.
func buildOnDemand(t *testing.T, root, rel, out string, onDemand []string) (Result, map[string]cpioHeader, map[string][]byte) {
	t.Helper()
	res, err := BuildInitrd(Options{Init: testInit(t), Modules: []string{"vmw_vsock_virtio_transport"}, OnDemand: onDemand,
		KernelRelease: rel, ModulesRoot: root, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, data, err := readCPIO(bytes.NewReader(raw), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpioHeader{}
	for _, h := range hdrs {
		byName["/"+h.Name] = h
	}
	return res, byName, data
}

// The image carries on-demand modules and their dependencies without
// loading them at boot, an index entry per module file (dependencies first)
// and a symlink per exact alias, and /sbin/modprobe as the agent.
func TestBuildInitrdOnDemand(t *testing.T) {
	root, rel := fakeTreeAliases(t, onDemandDep, onDemandAlias)
	res, hdrs, data := buildOnDemand(t, root, rel, filepath.Join(t.TempDir(), "initrd"), []string{"bridge", "veth"})

	wantBoot := []string{"kernel/b/vsock.ko", "kernel/a/virtio_ring.ko", "kernel/a/virtio.ko", "kernel/b/vmw_vsock_virtio_transport.ko"}
	wantOnDemand := []string{"kernel/n/llc.ko", "kernel/n/stp.ko", "kernel/n/bridge.ko", "kernel/n/veth.ko"}
	if !slices.Equal(res.Modules, wantBoot) || !slices.Equal(res.OnDemand, wantOnDemand) {
		t.Errorf("boot %q on demand %q, want %q and %q", res.Modules, res.OnDemand, wantBoot, wantOnDemand)
	}
	if list := string(data["etc/vmpod/modules"]); strings.Contains(list, "kernel/n/") {
		t.Errorf("on-demand modules in the boot list:\n%s", list)
	}
	for _, m := range append(wantBoot, wantOnDemand...) {
		if string(data["lib/modules/"+rel+"/"+m]) != "module "+m {
			t.Errorf("module file %s missing or wrong", m)
		}
	}
	wantIndex := map[string]string{
		"bridge":                     "kernel/n/llc.ko\nkernel/n/stp.ko\nkernel/n/bridge.ko\n",
		"stp":                        "kernel/n/llc.ko\nkernel/n/stp.ko\n",
		"veth":                       "kernel/n/veth.ko\n",
		"vsock":                      "kernel/b/vsock.ko\n",
		"virtio":                     "kernel/a/virtio_ring.ko\nkernel/a/virtio.ko\n",
		"vmw_vsock_virtio_transport": "kernel/b/vsock.ko\nkernel/a/virtio_ring.ko\nkernel/a/virtio.ko\nkernel/b/vmw_vsock_virtio_transport.ko\n",
	}
	for name, want := range wantIndex {
		p := path.Join(strings.TrimPrefix(kmod.IndexDir, "/"), name)
		if got := string(data[p]); got != want || hdrs["/"+p].Mode != modeFile|0o644 {
			t.Errorf("index %s: %q mode %o, want %q", name, got, hdrs["/"+p].Mode, want)
		}
	}
	// Exact aliases of the image's modules, first line wins; never a
	// pattern, a module's own name, or a module the image lacks.
	wantAliases := map[string]string{"rtnl_link_bridge": "bridge", "rtnl_link_veth": "veth", "net_pf_40": "vsock"}
	if !slices.Equal(res.Aliases, sortedKeys(wantAliases)) {
		t.Errorf("aliases %q, want %q", res.Aliases, sortedKeys(wantAliases))
	}
	for alias, mod := range wantAliases {
		p := path.Join(strings.TrimPrefix(kmod.IndexDir, "/"), alias)
		if hdrs["/"+p].Mode&modeTypes != modeSymlink || string(data[p]) != mod {
			t.Errorf("alias %s: mode %o -> %q, want a symlink to %s", alias, hdrs["/"+p].Mode, data[p], mod)
		}
	}
	for _, absent := range []string{"fs_unused", "rtnl_link_vlan", "8021q"} {
		if _, ok := hdrs[path.Join(kmod.IndexDir, absent)]; ok {
			t.Errorf("index has %s, which is not in the image", absent)
		}
	}
	if h := hdrs[kmod.HelperPath]; h.Mode&modeTypes != modeSymlink || string(data[strings.TrimPrefix(kmod.HelperPath, "/")]) != "/init" {
		t.Errorf("%s: mode %o -> %q, want a symlink to /init", kmod.HelperPath, h.Mode, data[strings.TrimPrefix(kmod.HelperPath, "/")])
	}
	checkGuestResolves(t, hdrs, data)
}

// checkGuestResolves unpacks the image's index and resolves it as the
// guest does: the builder and kmod agree on names, aliases and order.
func checkGuestResolves(t *testing.T, hdrs map[string]cpioHeader, data map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	prefix := strings.TrimPrefix(kmod.IndexDir, "/") + "/"
	for name, h := range hdrs {
		rel, ok := strings.CutPrefix(strings.TrimPrefix(name, "/"), prefix)
		if !ok {
			continue
		}
		var err error
		if h.Mode&modeTypes == modeSymlink {
			err = os.Symlink(string(data[prefix+rel]), filepath.Join(dir, rel))
		} else {
			err = os.WriteFile(filepath.Join(dir, rel), data[prefix+rel], 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string][]string{
		"rtnl-link-bridge": {"kernel/n/llc.ko", "kernel/n/stp.ko", "kernel/n/bridge.ko"},
		"veth":             {"kernel/n/veth.ko"},
		"net-pf-40":        {"kernel/b/vsock.ko"},
	}
	for name, want := range cases {
		if _, files, err := kmod.Resolve(dir, name); err != nil || !slices.Equal(files, want) {
			t.Errorf("guest resolves %s to %q, %v; want %q", name, files, err, want)
		}
	}
}

func TestBuildInitrdOnDemandErrors(t *testing.T) {
	cases := []struct {
		name, dep, alias, want string
		onDemand               []string
	}{
		{"missing dependency", onDemandDep + "kernel/n/vxlan.ko: kernel/n/udp_tunnel.ko\n", "",
			"module kernel/n/udp_tunnel.ko (needed by kernel/n/vxlan.ko) is not in", []string{"vxlan"}},
		{"unknown", onDemandDep, "", `module "nosuch" not found`, []string{"bridge", "nosuch"}},
		{"compressed", onDemandDep + "kernel/n/tun.ko.xz:\n", "", "kernel/n/tun.ko.xz is compressed", []string{"tun"}},
		{"bad alias line", onDemandDep, "alias rtnl-link-veth\n", "modules.alias:1", []string{"veth"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, rel := fakeTreeAliases(t, c.dep, c.alias)
			out := filepath.Join(t.TempDir(), "initrd")
			_, err := BuildInitrd(Options{Init: testInit(t), Modules: []string{"vsock"}, OnDemand: c.onDemand,
				KernelRelease: rel, ModulesRoot: root, Output: out})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s written despite the error", out)
			}
		})
	}
	root, rel := fakeTree(t, onDemandDep)
	os.Remove(filepath.Join(root, rel, "modules.alias"))
	_, err := BuildInitrd(Options{Init: testInit(t), Modules: []string{"vsock"}, OnDemand: []string{"veth"},
		KernelRelease: rel, ModulesRoot: root, Output: filepath.Join(t.TempDir(), "initrd")})
	if err == nil || !strings.Contains(err.Error(), "modules.alias") {
		t.Errorf("no modules.alias: error %v, want one naming it", err)
	}
}

// Same inputs, same bytes, with the index's files and symlinks too.
func TestBuildInitrdOnDemandReproducible(t *testing.T) {
	root, rel := fakeTreeAliases(t, onDemandDep, onDemandAlias)
	dir := t.TempDir()
	var images [][]byte
	for _, name := range []string{"a", "b"} {
		out := filepath.Join(dir, name)
		buildOnDemand(t, root, rel, out, []string{"veth", "bridge"})
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, b)
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Error("two builds from the same inputs differ")
	}
}
