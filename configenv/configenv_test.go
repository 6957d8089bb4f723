package configenv

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/config"
)

func load(t *testing.T, text string) (*config.Config, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmpod.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, p
}

func render(t *testing.T, cfg *config.Config) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, cfg); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// keyLines maps "section.key" to the rest of its line.
func keyLines(out string) map[string]string {
	m := map[string]string{}
	section := ""
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		case line == "", strings.HasPrefix(line, "#"):
		default:
			k, v, _ := strings.Cut(line, " = ")
			m[section+"."+k] = v
		}
	}
	return m
}

func TestWriteAnnotatesSources(t *testing.T) {
	cfg, path := load(t, "[hypervisor.qemu]\ndefault_memory = 1024\n[runtime]\nnetwork_model = \"none\"\n")
	out := render(t, cfg)
	if !strings.Contains(out, "overridden by\n# "+path+"\n") {
		t.Fatalf("header does not name %s:\n%s", path, out)
	}
	lines := keyLines(out)
	want := map[string]string{
		"hypervisor.qemu.default_memory": "1024  # " + path,
		"runtime.network_model":          `"none"  # ` + path,
		"hypervisor.qemu.default_vcpus":  "1  # default",
		"hypervisor.qemu.path":           `"qemu-system-x86_64"  # default`,
		"agent.dial_timeout":             `"30s"  # default`,
		"hypervisor.qemu.kernel_params":  "[]  # default",
	}
	for k, v := range want {
		if lines[k] != v {
			t.Errorf("%s: got %q, want %q", k, lines[k], v)
		}
	}
	n := 0
	for k, v := range lines {
		if strings.HasSuffix(v, "# "+path) {
			n++
		} else if !strings.HasSuffix(v, "# default") {
			t.Errorf("%s has no source: %q", k, v)
		}
	}
	if n != 2 {
		t.Errorf("%d keys attributed to the file, want 2:\n%s", n, out)
	}
}

// The output is a configuration file that loads back to the same values,
// including strings that need quoting.
func TestWriteRoundTrip(t *testing.T) {
	cfg, _ := load(t, `[hypervisor.qemu]
kernel_params = ["quiet", "a=\"b c\"", "x#y"]
machine_type = "microvm"
[agent]
dial_timeout = "90s"
debug = true
`)
	out := render(t, cfg)
	again, _ := load(t, out)
	again.Source, cfg.Source = "", ""
	if !reflect.DeepEqual(again, cfg) {
		t.Fatalf("round trip changed the configuration:\n%+v\n%+v\n%s", cfg, again, out)
	}
}

func TestWriteDefaults(t *testing.T) {
	old := config.SystemPath
	config.SystemPath = filepath.Join(t.TempDir(), "absent.toml")
	t.Cleanup(func() { config.SystemPath = old })
	t.Setenv(config.EnvConfig, "")
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	out := render(t, cfg)
	if !strings.Contains(out, "embedded defaults alone") || !strings.Contains(out, config.SystemPath) {
		t.Fatalf("header:\n%s", out)
	}
	for k, v := range keyLines(out) {
		if !strings.HasSuffix(v, "  # default") {
			t.Errorf("%s: %q is not marked default", k, v)
		}
	}
}

// Every key of config.Config is printed: a key added there shows up here.
func TestWriteEveryKey(t *testing.T) {
	cfg, _ := load(t, "")
	lines := keyLines(render(t, cfg))
	var count func(reflect.Type) int
	count = func(t reflect.Type) int {
		n := 0
		for i := range t.NumField() {
			f := t.Field(i)
			if _, ok := tomlKey(f); !ok {
				continue
			}
			if f.Type.Kind() == reflect.Struct && !f.Type.Implements(textMarshaler) {
				n += count(f.Type)
			} else {
				n++
			}
		}
		return n
	}
	if want := count(reflect.TypeFor[config.Config]()); len(lines) != want || want < 15 {
		t.Fatalf("%d keys printed, config.Config has %d", len(lines), want)
	}
}

func TestWriteFileGone(t *testing.T) {
	cfg, path := load(t, "[agent]\ndebug = true\n")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	err := Write(&bytes.Buffer{}, cfg)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("got %v, want an error naming %s", err, path)
	}
}

// TestWriteShowsHypervisorType: [hypervisor] type and [hypervisor.clh]
// appear with their sources.
func TestWriteShowsHypervisorType(t *testing.T) {
	cfg, path := load(t, "[hypervisor]\ntype = \"clh\"\n[hypervisor.clh]\ndefault_memory = 1024\n")
	lines := keyLines(render(t, cfg))
	for key, want := range map[string]string{
		"hypervisor.type":                `"clh"  # ` + path,
		"hypervisor.clh.default_memory":  "1024  # " + path,
		"hypervisor.clh.path":            `"cloud-hypervisor"  # default`,
		"hypervisor.qemu.default_memory": "512  # default",
	} {
		if lines[key] != want {
			t.Errorf("%s = %q, want %q", key, lines[key], want)
		}
	}
}
