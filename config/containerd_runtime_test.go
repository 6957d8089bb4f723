package config

import (
	"testing"

	"github.com/BurntSushi/toml"
)

// TestContainerdSnippet checks the containerd configuration that
// `make install` ships: valid TOML declaring the kata runtime type.
func TestContainerdSnippet(t *testing.T) {
	var c struct {
		Plugins map[string]struct {
			Containerd struct {
				Runtimes map[string]struct {
					RuntimeType string         `toml:"runtime_type"`
					Options     map[string]any `toml:"options"`
				} `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"plugins"`
	}
	md, err := toml.DecodeFile("containerd-runtime.toml", &c)
	if err != nil {
		t.Fatal(err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		t.Errorf("unexpected keys %v", un)
	}
	kata := c.Plugins["io.containerd.grpc.v1.cri"].Containerd.Runtimes["kata"]
	if kata.RuntimeType != "io.containerd.kata.v2" {
		t.Errorf("runtime_type = %q, want io.containerd.kata.v2", kata.RuntimeType)
	}
	if !md.IsDefined("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "kata", "options") {
		t.Error("no options table for the kata runtime")
	}
}
