package kconfig

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, p, text string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Kconfig"), "config VSOCKETS\n\ttristate \"vsock\"\nmenuconfig NET\n\tbool \"net\"\n")
	writeFile(t, filepath.Join(src, "fs", "Kconfig.binfmt"), "config BINFMT_ELF\n\tbool\nconfig PVH\n\tbool\n")
	syms, err := Symbols(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"CONFIG_VSOCKETS", "CONFIG_NET", "CONFIG_BINFMT_ELF", "CONFIG_PVH"} {
		if !syms[s] {
			t.Errorf("symbol %s not found", s)
		}
	}

	frag := writeFile(t, filepath.Join(t.TempDir(), "guest.conf"),
		"# comment\nCONFIG_VSOCKETS=y\nCONFIG_NET=y\nCONFIG_VSOCK_TYPO=y\n# CONFIG_BINFMT_ELF is not set\nCONFIG_PVH=y\n")
	settings, err := ReadFragment(frag)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(strings.NewReader("CONFIG_VSOCKETS=y\nCONFIG_NET=y\n# CONFIG_PVH is not set\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = Check(settings, cfg, syms)
	if err == nil {
		t.Fatal("no error for an unknown option and a lost one")
	}
	msg := err.Error()
	for _, want := range []string{
		frag + ":4: CONFIG_VSOCK_TYPO: the kernel source has no such option",
		frag + ":6: CONFIG_PVH: asked for y, the merged config has n",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	for _, fine := range []string{"CONFIG_VSOCKETS:", "CONFIG_NET:", "CONFIG_BINFMT_ELF:"} {
		if strings.Contains(msg, fine) {
			t.Errorf("error names %s, which was applied: %q", fine, msg)
		}
	}

	cfg["CONFIG_PVH"] = "y"
	good := []Setting{settings[0], settings[1], settings[3], settings[4]}
	if err := Check(good, cfg, syms); err != nil {
		t.Errorf("applied fragment: %v", err)
	}
}

func TestReadFragmentErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ text, want string }{
		{"CONFIG_A=y\nVSOCK=y\n", "bad.conf:2: \"VSOCK=y\" is not CONFIG_NAME=value"},
		{"CONFIG_A=y\n# CONFIG_A is not set\n", "bad.conf:2: CONFIG_A=n contradicts line 1 (y)"},
	} {
		p := writeFile(t, filepath.Join(dir, "bad.conf"), tc.text)
		if _, err := ReadFragment(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.text, err, tc.want)
		}
	}
}

// The fragments committed in the repository parse, and name each option
// once.
func TestRepositoryFragments(t *testing.T) {
	paths, err := filepath.Glob("../configs/fragments/*.conf")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fragments found: %v", err)
	}
	seen := map[string]string{}
	for _, p := range paths {
		settings, err := ReadFragment(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range settings {
			if prev, ok := seen[s.Name]; ok {
				t.Errorf("%s named in %s and %s", s.Name, prev, s)
			}
			seen[s.Name] = s.String()
		}
	}
	for _, need := range append(slices.Clone(GuestNeeds), HotplugNeeds...) {
		found := false
		for _, o := range need.Options {
			if _, ok := seen[o]; ok {
				found = true
			}
		}
		if !found {
			t.Errorf("no fragment asks for %s", need.Feature)
		}
	}
}

func TestMissing(t *testing.T) {
	cfg := Config{"CONFIG_VIRTIO_VSOCKETS": "m", "CONFIG_VIRTIO_MMIO": "y", "CONFIG_VIRTIO_FS": "n"}
	got := strings.Join(Missing(cfg, GuestNeeds), "; ")
	if strings.Contains(got, "vsock") || strings.Contains(got, "virtio transport") {
		t.Errorf("vsock as a module, or MMIO alone, reported missing: %s", got)
	}
	if !strings.Contains(got, "virtio-fs (the pod's shared directory) (CONFIG_VIRTIO_FS)") {
		t.Errorf("virtio-fs not reported: %s", got)
	}
}

func TestEmbedded(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("CONFIG_VIRTIO_FS=y\n# CONFIG_MODULES is not set\n"))
	zw.Close()
	// The marker's first byte just before it, as "IIKCFG_ST", must not
	// hide it; the image goes on after the end marker.
	image := append(append(append(bytes.Repeat([]byte{0, 'I', 'K'}, 100000), "IIKCFG_ST"...), gz.Bytes()...), "IKCFG_ED more kernel"...)
	cfg, err := Embedded(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	if cfg["CONFIG_VIRTIO_FS"] != "y" {
		t.Errorf("config %v, want CONFIG_VIRTIO_FS=y", cfg)
	}
	if _, err := Embedded(bytes.NewReader(bytes.Repeat([]byte("IKCFG_S"), 1000))); !errors.Is(err, ErrNoEmbedded) {
		t.Errorf("no marker: %v, want ErrNoEmbedded", err)
	}
	if _, err := Embedded(bytes.NewReader([]byte("xxIKCFG_STnot gzip"))); err == nil || errors.Is(err, ErrNoEmbedded) {
		t.Errorf("garbage after the marker: %v, want a gzip error", err)
	}
}
