// Package kconfig reads Linux kernel configurations: the config fragments
// vmpod's guest kernel is built from (kernel/configs/fragments), the
// .config a build ends with, and the configuration a kernel image carries
// inside itself (CONFIG_IKCONFIG). The build checks that every option a
// fragment names ended up as asked (Check); `vmpod check` and the shim
// check that a configured kernel has what the guest needs (Missing).
package kconfig

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Config is a kernel configuration: option name (with its CONFIG_ prefix)
// to value as .config writes it ("y", "m", "64", "\"-vmpod\""); an option
// that "is not set" has the value "n".
type Config map[string]string

// Setting is one line of a fragment.
type Setting struct {
	Name, Value string
	File        string
	Line        int
}

func (s Setting) String() string {
	return fmt.Sprintf("%s:%d: %s=%s", s.File, s.Line, s.Name, s.Value)
}

var (
	setRe   = regexp.MustCompile(`^(CONFIG_[A-Za-z0-9_]+)=(.*)$`)
	unsetRe = regexp.MustCompile(`^# (CONFIG_[A-Za-z0-9_]+) is not set$`)
)

// parse reads .config syntax. strict rejects any other line than a
// setting, an "is not set" line, a comment or a blank (fragments are
// written by hand; a .config is written by kconfig).
func parse(r io.Reader, file string, strict bool) ([]Setting, error) {
	var out []Setting
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if m := setRe.FindStringSubmatch(text); m != nil {
			out = append(out, Setting{Name: m[1], Value: m[2], File: file, Line: line})
			continue
		}
		if m := unsetRe.FindStringSubmatch(text); m != nil {
			out = append(out, Setting{Name: m[1], Value: "n", File: file, Line: line})
			continue
		}
		if strict && text != "" && !strings.HasPrefix(text, "#") {
			return nil, fmt.Errorf("%s:%d: %q is not CONFIG_NAME=value nor \"# CONFIG_NAME is not set\"", file, line, text)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return out, nil
}

// ParseConfig reads a .config (or the text of /proc/config.gz).
func ParseConfig(r io.Reader) (Config, error) {
	settings, err := parse(r, ".config", false)
	if err != nil {
		return nil, err
	}
	c := Config{}
	for _, s := range settings {
		c[s.Name] = s.Value
	}
	return c, nil
}

// ReadFragment reads a config fragment. An option named twice with two
// values is an error naming both lines.
func ReadFragment(path string) ([]Setting, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fragment: %w", err)
	}
	defer f.Close()
	settings, err := parse(f, path, true)
	if err != nil {
		return nil, err
	}
	seen := map[string]Setting{}
	for _, s := range settings {
		if prev, ok := seen[s.Name]; ok && prev.Value != s.Value {
			return nil, fmt.Errorf("%s:%d: %s=%s contradicts line %d (%s)", path, s.Line, s.Name, s.Value, prev.Line, prev.Value)
		}
		seen[s.Name] = s
	}
	return settings, nil
}

var symbolRe = regexp.MustCompile(`^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$`)

// Symbols returns the options the kernel source tree at dir defines (every
// "config X" and "menuconfig X" of its Kconfig files), as CONFIG_X.
func Symbols(dir string) (map[string]bool, error) {
	syms := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == ".git" || (p != dir && strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(d.Name(), "Kconfig") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if m := symbolRe.FindStringSubmatch(line); m != nil {
				syms["CONFIG_"+m[1]] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the Kconfig files of %s: %w", dir, err)
	}
	if len(syms) == 0 {
		return nil, fmt.Errorf("%s: no Kconfig options found (not a kernel source tree?)", dir)
	}
	return syms, nil
}

// Check compares what the fragments ask for with the merged configuration
// and returns one error naming every option that the source does not have
// (symbols) or that did not end up with the requested value (usually a
// dependency the fragments do not enable).
func Check(settings []Setting, cfg Config, symbols map[string]bool) error {
	var problems []string
	for _, s := range settings {
		if !symbols[s.Name] {
			problems = append(problems, fmt.Sprintf("%s:%d: %s: the kernel source has no such option", s.File, s.Line, s.Name))
			continue
		}
		got, ok := cfg[s.Name]
		if !ok {
			got = "n" // not visible: kconfig leaves it out of .config
		}
		if got != s.Value {
			problems = append(problems, fmt.Sprintf("%s:%d: %s: asked for %s, the merged config has %s (a dependency missing, or a choice taken elsewhere)", s.File, s.Line, s.Name, s.Value, got))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("kernel config fragments not applied:\n  %s", strings.Join(problems, "\n  "))
	}
	return nil
}

// ikcfgStart marks the gzipped configuration that CONFIG_IKCONFIG embeds
// in the kernel image (kernel/configs.c); scripts/extract-ikconfig looks
// for the same. The gzip stream ends by itself, before "IKCFG_ED".
var ikcfgStart = []byte("IKCFG_ST")

// ErrNoEmbedded means the kernel image carries no configuration
// (CONFIG_IKCONFIG is off), or carries it compressed in a way this package
// does not read (inside a bzImage's compressed payload).
var ErrNoEmbedded = errors.New("no embedded kernel configuration (CONFIG_IKCONFIG)")

// maxConfig bounds the decompressed configuration.
const maxConfig = 4 << 20

// Embedded returns the configuration embedded in a kernel image read from
// r: an uncompressed vmlinux, or a bzImage whose payload is not
// compressed. It reads r in small pieces, so that a shim checking a 20 MB
// kernel at every sandbox start does not hold it all.
func Embedded(r io.Reader) (Config, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	matched := 0
	for matched < len(ikcfgStart) {
		b, err := br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, ErrNoEmbedded
			}
			return nil, fmt.Errorf("embedded configuration: %w", err)
		}
		switch {
		case b == ikcfgStart[matched]:
			matched++
		case b == ikcfgStart[0]: // the marker has no other repeated prefix
			matched = 1
		default:
			matched = 0
		}
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("embedded configuration: %w", err)
	}
	zr.Multistream(false)
	text, err := io.ReadAll(io.LimitReader(zr, maxConfig))
	if err != nil {
		return nil, fmt.Errorf("embedded configuration: %w", err)
	}
	return ParseConfig(bytes.NewReader(text))
}

// Requirement is a kernel feature vmpod's guest needs, with the options
// that provide it: any of them built in or a module is enough (a module
// must then be in the initrd, which the image builder checks).
type Requirement struct {
	Feature string
	Options []string
}

// GuestNeeds are the features the guest cannot do without: the agent's
// connection, the shared directory, the container root filesystems.
var GuestNeeds = []Requirement{
	{"vsock (the agent's connection)", []string{"CONFIG_VIRTIO_VSOCKETS"}},
	{"virtio-fs (the pod's shared directory)", []string{"CONFIG_VIRTIO_FS"}},
	{"overlayfs (container root filesystems)", []string{"CONFIG_OVERLAY_FS"}},
	{"a virtio transport", []string{"CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_MMIO"}},
	{"cgroup v2 memory controller", []string{"CONFIG_MEMCG"}},
	{"seccomp filters", []string{"CONFIG_SECCOMP_FILTER"}},
	{"an initrd", []string{"CONFIG_BLK_DEV_INITRD"}},
}

// HotplugNeeds are what a guest kernel needs to take vCPUs and DIMMs while
// it runs (ACPI hot-plug on q35). Without them a VM keeps its boot size.
var HotplugNeeds = []Requirement{
	{"ACPI CPU hot-plug", []string{"CONFIG_ACPI_HOTPLUG_CPU"}},
	{"ACPI memory hot-plug", []string{"CONFIG_ACPI_HOTPLUG_MEMORY"}},
	{"memory hot-plug", []string{"CONFIG_MEMORY_HOTPLUG"}},
}

// Missing returns the features of needs that cfg has none of the options
// for, each as "feature (CONFIG_A or CONFIG_B)".
func Missing(cfg Config, needs []Requirement) []string {
	var out []string
	for _, r := range needs {
		found := false
		for _, o := range r.Options {
			if v := cfg[o]; v == "y" || v == "m" {
				found = true
				break
			}
		}
		if !found {
			out = append(out, fmt.Sprintf("%s (%s)", r.Feature, strings.Join(r.Options, " or ")))
		}
	}
	sort.Strings(out)
	return out
}
