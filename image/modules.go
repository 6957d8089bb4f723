package image

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are the modules the guest needs: virtio transports (PCI
// for q35, MMIO for microvm), vsock for the agent, virtio-fs for the shared
// directory, overlay for container root filesystems, virtio-net, and
// virtio-balloon, whose free page reporting gives freed guest memory back
// to the host ([hypervisor.qemu] free_page_reporting).
var DefaultModules = []string{
	"virtio_pci",
	"virtio_mmio",
	"vsock",
	"vmw_vsock_virtio_transport_common",
	"vmw_vsock_virtio_transport",
	"virtiofs",
	"overlay",
	"virtio_net",
	"virtio_balloon",
}

// moduleName turns a module path or name into the kernel's canonical name:
// no directory, no .ko suffix, dashes as underscores.
func moduleName(s string) string {
	s = filepath.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// modulesDep is a parsed modules.dep: module path (relative to the release's
// modules directory) to the paths it depends on.
type modulesDep struct {
	deps   map[string][]string
	byName map[string]string // canonical name -> path
}

func readModulesDep(path string) (*modulesDep, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading module dependencies: %w", err)
	}
	defer f.Close()
	md := &modulesDep{deps: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("%s:%d: missing ':'", path, line)
		}
		mod = strings.TrimSpace(mod)
		md.deps[mod] = strings.Fields(rest)
		md.byName[moduleName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return md, nil
}

// resolveModules returns the module files needed to load names from the
// modules tree dir (/lib/modules/<release>), relative to dir, in load
// order: each module after everything it depends on. Compressed modules
// are an error, since the guest loads them with finit_module as they are.
func resolveModules(dir string, names []string) ([]string, error) {
	md, err := readModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	return md.order(dir, names)
}

// order is resolveModules on a parsed modules.dep of the tree dir.
func (md *modulesDep) order(dir string, names []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var visit func(mod string, chain []string) error
	visit = func(mod string, chain []string) error {
		switch state[mod] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, mod), " -> "))
		}
		state[mod] = 1
		deps, ok := md.deps[mod]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) is not in %s/modules.dep", mod, strings.Join(chain, " -> "), dir)
		}
		for _, d := range deps {
			if err := visit(d, append(chain, mod)); err != nil {
				return err
			}
		}
		state[mod] = 2
		order = append(order, mod)
		return nil
	}
	for _, n := range names {
		mod, ok := md.byName[moduleName(n)]
		if !ok {
			return nil, fmt.Errorf("module %q not found in %s/modules.dep (built in, or not shipped with this kernel?)", n, dir)
		}
		if err := visit(mod, nil); err != nil {
			return nil, err
		}
	}
	for _, mod := range order {
		if !strings.HasSuffix(mod, ".ko") {
			return nil, fmt.Errorf("module %s is compressed: the guest loads uncompressed .ko files only; decompress the modules tree first", filepath.Join(dir, mod))
		}
	}
	return order, nil
}

// sortedKeys returns m's keys in order, for reproducible output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
