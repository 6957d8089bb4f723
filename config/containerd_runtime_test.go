package config

import (
	"slices"
	"testing"

	"github.com/BurntSushi/toml"
)

// TestContainerdSnippet checks the containerd configurations that
// `make install` ships, one per configuration version: valid TOML of that
// version declaring the kata runtime type where that version's CRI plugin
// reads it, passing Kata's pod annotations, with an options table.
func TestContainerdSnippet(t *testing.T) {
	for _, tc := range []struct {
		file    string
		version int64 // 0: none (a file merged into config.toml)
		plugin  string
	}{
		{"containerd-runtime.toml", 0, "io.containerd.grpc.v1.cri"},
		{"containerd-runtime-v3.toml", 3, "io.containerd.cri.v1.runtime"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var c struct {
				Version int64 `toml:"version"`
				Plugins map[string]struct {
					Containerd struct {
						Runtimes map[string]struct {
							RuntimeType    string         `toml:"runtime_type"`
							PodAnnotations []string       `toml:"pod_annotations"`
							Options        map[string]any `toml:"options"`
						} `toml:"runtimes"`
					} `toml:"containerd"`
				} `toml:"plugins"`
			}
			md, err := toml.DecodeFile(tc.file, &c)
			if err != nil {
				t.Fatal(err)
			}
			if un := md.Undecoded(); len(un) > 0 {
				t.Errorf("unexpected keys %v", un)
			}
			if c.Version != tc.version {
				t.Errorf("version = %d, want %d", c.Version, tc.version)
			}
			if len(c.Plugins) != 1 {
				t.Errorf("plugins %v, want only %s", c.Plugins, tc.plugin)
			}
			kata := c.Plugins[tc.plugin].Containerd.Runtimes["kata"]
			if kata.RuntimeType != "io.containerd.kata.v2" {
				t.Errorf("plugins.%q...kata.runtime_type = %q, want io.containerd.kata.v2", tc.plugin, kata.RuntimeType)
			}
			// Kata's per-pod annotations reach the shim only through
			// this list (podconfig).
			if want := []string{"io.katacontainers.*"}; !slices.Equal(kata.PodAnnotations, want) {
				t.Errorf("plugins.%q...kata.pod_annotations = %q, want %q", tc.plugin, kata.PodAnnotations, want)
			}
			if !md.IsDefined("plugins", tc.plugin, "containerd", "runtimes", "kata", "options") {
				t.Error("no options table for the kata runtime")
			}
		})
	}
}
