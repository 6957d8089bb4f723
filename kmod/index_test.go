package kmod

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeIndex writes an index as the image builder does: a file per module,
// a symlink per alias.
func fakeIndex(t *testing.T, files map[string]string, aliases map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for alias, target := range aliases {
		if err := os.Symlink(target, filepath.Join(dir, alias)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var bridgeEntry = "kernel/net/llc/llc.ko\nkernel/net/802/stp.ko\nkernel/net/bridge/bridge.ko\n"

func TestResolve(t *testing.T) {
	dir := fakeIndex(t, map[string]string{
		"bridge":         bridgeEntry,
		"8021q":          "# comment\n\nkernel/net/8021q/8021q.ko\n",
		"ip6_udp_tunnel": "kernel/net/ipv6/ip6_udp_tunnel.ko\n",
	}, map[string]string{"rtnl_link_bridge": "bridge"})
	wantBridge := []string{"kernel/net/llc/llc.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko"}
	cases := []struct {
		name, module string
		files        []string
	}{
		{"bridge", "bridge", wantBridge},
		{"rtnl-link-bridge", "bridge", wantBridge}, // the kernel's spelling of the alias
		{"rtnl_link_bridge", "bridge", wantBridge},
		{"8021q", "8021q", []string{"kernel/net/8021q/8021q.ko"}},
		{"ip6-udp-tunnel", "ip6_udp_tunnel", []string{"kernel/net/ipv6/ip6_udp_tunnel.ko"}},
	}
	for _, c := range cases {
		mod, files, err := Resolve(dir, c.name)
		if err != nil || mod != c.module || !slices.Equal(files, c.files) {
			t.Errorf("Resolve(%q) = %q, %q, %v; want %q, %q", c.name, mod, files, err, c.module, c.files)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	dir := fakeIndex(t, map[string]string{
		"absolute":  "/lib/modules/x/absolute.ko\n",
		"escapes":   "../../escapes.ko\n",
		"notko":     "kernel/notko.ko.xz\n",
		"empty":     "# nothing\n",
		"wrongtail": "kernel/other.ko\n",
		"huge":      strings.Repeat("kernel/x.ko\n", maxIndexFile/8),
		"many":      strings.Repeat("kernel/x.ko\n", maxDeps) + "kernel/many.ko\n",
	}, map[string]string{
		"dangling":    "gone",
		"outside":     "../etc/passwd",
		"chain":       "dangling",
		"self_loop":   "self_loop",
		"to_absolute": "/etc/passwd",
	})
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, want string }{
		{"", "empty module name"},
		{"a/b", "invalid character"},
		{"..", "not a name"},
		{"with space", "invalid character"},
		{"nl\n", "invalid character"},
		{strings.Repeat("x", 300), "longer than"},
		{"nosuch", "not in the image's module index"},
		{"absolute", "not a relative path"},
		{"escapes", "not a relative path"},
		{"notko", "not a relative path"},
		{"empty", "lists no module file"},
		{"wrongtail", "not with module wrongtail"},
		{"huge", "larger than"},
		{"many", "more than 256 files"},
		{"dangling", "alias of gone"},
		{"outside", "invalid character"},
		{"chain", "not a regular file"},
		{"self-loop", "not a regular file"},
		{"to_absolute", "invalid character"},
		{"adir", "not a regular file"},
	}
	for _, c := range cases {
		_, _, err := Resolve(dir, c.name)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Resolve(%.40q): error %v, want one containing %q", c.name, err, c.want)
			continue
		}
		// Every error names what was asked for (but an empty name).
		if c.name != "" && len(c.name) < 100 && !strings.Contains(err.Error(), strings.TrimSpace(c.name)) && !strings.Contains(err.Error(), IndexName(c.name)) {
			t.Errorf("Resolve(%q): error %q does not name the module", c.name, err)
		}
	}
	if _, _, err := Resolve(dir, "nosuch"); !errors.Is(err, ErrNotInIndex) {
		t.Errorf("unknown module: %v, want ErrNotInIndex", err)
	}
}

// LoadByName stops at the first file it cannot load and names the module
// and the file (the index lists a file the image lacks); loading itself
// needs the guest kernel and is tested in the VM (integration
// TestGuestModules).
func TestLoadByNameMissingFile(t *testing.T) {
	dir := fakeIndex(t, map[string]string{"bridge": bridgeEntry}, map[string]string{"rtnl_link_bridge": "bridge"})
	modDir := t.TempDir()
	err := LoadByName(dir, modDir, "rtnl-link-bridge")
	if err == nil || !strings.Contains(err.Error(), "module bridge") || !strings.Contains(err.Error(), filepath.Join(modDir, "kernel/net/llc/llc.ko")) {
		t.Errorf("error %v, want one naming bridge and its first file", err)
	}
}

func TestHelperArgs(t *testing.T) {
	good := []struct {
		args  []string
		name  string
		quiet bool
	}{
		{[]string{"-q", "--", "rtnl-link-veth"}, "rtnl-link-veth", true},
		{[]string{"bridge"}, "bridge", false},
	}
	for _, c := range good {
		name, quiet, err := HelperArgs(c.args)
		if err != nil || name != c.name || quiet != c.quiet {
			t.Errorf("HelperArgs(%q) = %q, %v, %v", c.args, name, quiet, err)
		}
	}
	bad := [][]string{nil, {""}, {"-q"}, {"-q", "bridge"}, {"-r", "bridge"}, {"-q", "--", "a", "b"}, {"bridge", "veth"}, {"-q", "--", "a/b"}, {"--", "bridge"}}
	for _, args := range bad {
		if _, _, err := HelperArgs(args); err == nil {
			t.Errorf("HelperArgs(%q): no error", args)
		}
	}
}

func TestHelper(t *testing.T) {
	dir := fakeIndex(t, map[string]string{"bridge": bridgeEntry}, nil)
	modDir := t.TempDir()
	cases := []struct {
		args   []string
		status int
		stderr string
	}{
		{[]string{"-q", "--", "netdev-foo"}, HelperFailed, ""}, // quiet about unknown names, as modprobe -q
		{[]string{"netdev-foo"}, HelperFailed, "netdev-foo: not in the image's module index"},
		{[]string{"-q", "--", "bridge"}, HelperFailed, "kernel/net/llc/llc.ko"}, // never quiet about a failed load
		{[]string{"-a", "bridge"}, HelperUsage, "usage"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		status := Helper(c.args, dir, modDir, &stderr)
		if status != c.status {
			t.Errorf("Helper(%q) = %d, want %d", c.args, status, c.status)
		}
		if c.stderr == "" && stderr.Len() != 0 || !strings.Contains(stderr.String(), c.stderr) {
			t.Errorf("Helper(%q) wrote %q, want %q", c.args, stderr.String(), c.stderr)
		}
	}
}

// FuzzResolve: whatever the name and the index entry, Resolve returns an
// error or files that stay inside the modules tree.
func FuzzResolve(f *testing.F) {
	f.Add("bridge", bridgeEntry)
	f.Add("rtnl-link-bridge", "kernel/a.ko\n")
	f.Add("x", "../x.ko")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, name, entry string) {
		if CheckName(name) != nil {
			if _, _, err := Resolve(dir, name); err == nil {
				t.Fatalf("Resolve(%q) accepted an invalid name", name)
			}
			return
		}
		p := filepath.Join(dir, IndexName(name))
		if err := os.WriteFile(p, []byte(entry), 0o644); err != nil {
			t.Skip(err)
		}
		defer os.Remove(p)
		_, files, err := Resolve(dir, name)
		if err != nil {
			return
		}
		for _, file := range files {
			if filepath.IsAbs(file) || strings.HasPrefix(filepath.Clean(file), "..") {
				t.Fatalf("Resolve(%q) returned %q outside the tree", name, file)
			}
		}
	})
}
