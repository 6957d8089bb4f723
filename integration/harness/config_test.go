package harness

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/vmpod/vmpod/internal/testbin"
)

// TestConfigTOML checks the configuration written for each containerd
// major version: the version 2 layout for 1.x (one CRI plugin), the
// version 3 layout for 2.x (CRI split into runtime, images and server),
// with the same handlers, sandbox image, CNI and registry settings.
func TestConfigTOML(t *testing.T) {
	opts := Options{
		CRI:                true,
		SandboxImage:       "registry.k8s.io/pause:test",
		KataConfigPath:     "/etc/vmpod/test.toml",
		RegistryConfigPath: "/tmp/hosts",
		KataPodAnnotations: []string{"io.katacontainers.*"},
	}
	c := &Containerd{Dir: "/tmp/d", Root: "/tmp/d/root", State: "/tmp/d/state", Address: "/tmp/d/containerd.sock", opts: opts}

	// get walks the decoded document along keys; nil if absent.
	get := func(t *testing.T, doc map[string]any, keys ...string) any {
		t.Helper()
		var v any = doc
		for _, k := range keys {
			if v == nil {
				return nil // absent
			}
			m, ok := v.(map[string]any)
			if !ok {
				t.Errorf("%s: %q is not a table", strings.Join(keys, "."), k)
				return nil
			}
			v = m[k]
		}
		return v
	}
	decode := func(t *testing.T, major int) map[string]any {
		t.Helper()
		c.Daemon = Daemon{Major: major}
		cfg, err := c.configTOML()
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if _, err := toml.Decode(cfg, &doc); err != nil {
			t.Fatalf("config for containerd %d.x is not TOML: %v\n%s", major, err, cfg)
		}
		for k, want := range map[string]any{"root": c.Root, "state": c.State} {
			if got := doc[k]; got != want {
				t.Errorf("%s = %v, want %v", k, got, want)
			}
		}
		if got := get(t, doc, "grpc", "address"); got != c.Address {
			t.Errorf("grpc.address = %v, want %s", got, c.Address)
		}
		return doc
	}
	// check compares the values at paths (dot-separated, plugin names
	// quoted) with want.
	check := func(t *testing.T, doc map[string]any, want map[string]any) {
		t.Helper()
		for path, w := range want {
			keys := splitPath(path)
			got := get(t, doc, keys...)
			if l, ok := got.([]any); ok && len(l) == 1 {
				got = l[0] // a one-entry list: compare its entry
			}
			if got != w {
				t.Errorf("%s = %v, want %v", path, got, w)
			}
		}
	}

	t.Run("containerd 1.x", func(t *testing.T) {
		doc := decode(t, 1)
		if v := doc["version"]; v != int64(2) {
			t.Errorf("version = %v, want 2", v)
		}
		const p = `plugins."io.containerd.grpc.v1.cri".`
		check(t, doc, map[string]any{
			p + "sandbox_image":                                 opts.SandboxImage,
			p + "restrict_oom_score_adj":                        true,
			p + "cni.bin_dir":                                   cniBinDir,
			p + "cni.conf_dir":                                  c.CNIConfDir(),
			p + "registry.config_path":                          opts.RegistryConfigPath,
			p + "containerd.default_runtime_name":               "runc",
			p + "containerd.runtimes.runc.runtime_type":         "io.containerd.runc.v2",
			p + "containerd.runtimes.kata.runtime_type":         "io.containerd.kata.v2",
			p + "containerd.runtimes.kata.options.ConfigPath":   opts.KataConfigPath,
			p + "containerd.runtimes.kata.pod_annotations":      "io.katacontainers.*",
			`plugins."io.containerd.cri.v1.runtime".containerd`: nil,
		})
	})

	t.Run("containerd 2.x", func(t *testing.T) {
		doc := decode(t, 2)
		if v := doc["version"]; v != int64(3) {
			t.Errorf("version = %v, want 3", v)
		}
		const (
			rt  = `plugins."io.containerd.cri.v1.runtime".`
			img = `plugins."io.containerd.cri.v1.images".`
			srv = `plugins."io.containerd.grpc.v1.cri".`
		)
		check(t, doc, map[string]any{
			img + "pinned_images.sandbox":                      opts.SandboxImage,
			img + "registry.config_path":                       opts.RegistryConfigPath,
			img + "snapshotter":                                "overlayfs",
			rt + "restrict_oom_score_adj":                      true,
			rt + "cni.bin_dirs":                                cniBinDir,
			rt + "cni.conf_dir":                                c.CNIConfDir(),
			rt + "containerd.default_runtime_name":             "runc",
			rt + "containerd.runtimes.runc.runtime_type":       "io.containerd.runc.v2",
			rt + "containerd.runtimes.kata.runtime_type":       "io.containerd.kata.v2",
			rt + "containerd.runtimes.kata.options.ConfigPath": opts.KataConfigPath,
			rt + "containerd.runtimes.kata.pod_annotations":    "io.katacontainers.*",
			srv + "stream_server_address":                      "127.0.0.1",
			srv + "sandbox_image":                              nil, // 1.x's key, gone in 2.x
			srv + "containerd":                                 nil,
			rt + "enable_unprivileged_ports":                   nil, // containerd's default, as on nodes
		})
	})

	// The snippets that make install ships: merged into config.toml for
	// 1.x, imported as a drop-in by 2.x; the harness declares no kata
	// runtime of its own then.
	t.Run("runtime snippet", func(t *testing.T) {
		defer func() { c.opts = opts }()
		root := testbin.ModuleRoot()
		c.opts = Options{CRI: true, RuntimeSnippet: filepath.Join(root, "config", "containerd-runtime.toml")}
		doc := decode(t, 1)
		check(t, doc, map[string]any{
			`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata.runtime_type`: "io.containerd.kata.v2",
			`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.runtime_type`: "io.containerd.runc.v2",
		})
		if doc["imports"] != nil {
			t.Errorf("containerd 1.x: imports = %v, want none", doc["imports"])
		}

		v3 := filepath.Join(root, "config", "containerd-runtime-v3.toml")
		c.opts = Options{CRI: true, RuntimeSnippet: v3}
		doc = decode(t, 2)
		check(t, doc, map[string]any{
			"imports": v3,
			`plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata`:              nil,
			`plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.runtime_type`: "io.containerd.runc.v2",
		})

		c.opts = Options{CRI: true, RuntimeSnippet: filepath.Join(t.TempDir(), "missing.toml")}
		c.Daemon = Daemon{Major: 1}
		if _, err := c.configTOML(); err == nil || !strings.Contains(err.Error(), "missing.toml") {
			t.Errorf("missing snippet: error %v, want one naming the file", err)
		}
	})

	t.Run("no CRI", func(t *testing.T) {
		c.opts = Options{}
		defer func() { c.opts = opts }()
		for _, major := range []int{1, 2} {
			doc := decode(t, major)
			disabled, _ := doc["disabled_plugins"].([]any)
			var found []string
			for _, d := range disabled {
				if s, _ := d.(string); strings.Contains(s, "cri") {
					found = append(found, s)
				}
			}
			want := []string{"io.containerd.grpc.v1.cri"}
			if major == 2 {
				want = append(want, "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images")
			}
			if strings.Join(found, ",") != strings.Join(want, ",") {
				t.Errorf("containerd %d.x: disabled CRI plugins %v, want %v", major, found, want)
			}
			if _, ok := doc["plugins"]; ok {
				t.Errorf("containerd %d.x: plugins configured without CRI: %v", major, doc["plugins"])
			}
		}
	})
}

// splitPath splits a.b."c.d".e into its keys.
func splitPath(path string) []string {
	var keys []string
	var cur strings.Builder
	quoted := false
	for _, r := range path {
		switch {
		case r == '"':
			quoted = !quoted
		case r == '.' && !quoted:
			keys = append(keys, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	return append(keys, cur.String())
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		out     string
		version string
		major   int
	}{
		{"containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n", "1.6.20~ds1", 1},
		{"containerd github.com/containerd/containerd/v2 v2.4.2 \n", "v2.4.2", 2},
		{"containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da\n", "1.7.27", 1},
	} {
		v, m, err := parseVersion(tc.out)
		if err != nil || v != tc.version || m != tc.major {
			t.Errorf("parseVersion(%q) = %q, %d, %v; want %q, %d", tc.out, v, m, err, tc.version, tc.major)
		}
	}
	for _, bad := range []string{"", "ctr github.com/containerd/containerd v2.4.2", "containerd x vX.1"} {
		if _, _, err := parseVersion(bad); err == nil {
			t.Errorf("parseVersion(%q): no error", bad)
		}
	}
}
