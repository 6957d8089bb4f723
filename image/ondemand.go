package image

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmpod/vmpod/kmod"
)

// DefaultOnDemand are the modules the image carries without loading them at
// boot, for containers that build their own network devices (a privileged
// container running `brctl addbr`, `ip link add type veth`, a VLAN or a
// VXLAN): the guest loads them, with their dependencies, when the kernel
// asks (kmod.Helper). With their dependencies they add about 1.2 MB to the
// initrd.
var DefaultOnDemand = []string{"bridge", "veth", "8021q", "vxlan"}

// moduleSet is the modules an image carries and the index the guest's
// modprobe helper resolves them with.
type moduleSet struct {
	boot     []string            // files loaded at boot, in load order
	onDemand []string            // further files, in load order
	index    map[string][]string // kmod.IndexName of a module -> its files in load order
	aliases  map[string]string   // kmod.IndexName of an alias -> module's index name
}

// planModules resolves the boot and on-demand modules of the tree dir and
// builds their index: an entry per module file in the image (so that a
// dependency, or a boot module, can be asked for too) and the exact
// aliases modules.alias gives them.
func planModules(dir string, boot, onDemand []string) (*moduleSet, error) {
	md, err := readModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	ms := &moduleSet{index: map[string][]string{}}
	if ms.boot, err = md.order(dir, boot); err != nil {
		return nil, err
	}
	all, err := md.order(dir, append(slices.Clone(boot), onDemand...))
	if err != nil {
		return nil, fmt.Errorf("on-demand modules: %w", err)
	}
	for _, f := range all {
		if !slices.Contains(ms.boot, f) {
			ms.onDemand = append(ms.onDemand, f)
		}
		name := kmod.IndexName(moduleName(f))
		if ms.index[name], err = md.order(dir, []string{name}); err != nil {
			return nil, err
		}
	}
	ms.aliases, err = readAliases(filepath.Join(dir, "modules.alias"), ms.index)
	if err != nil {
		return nil, err
	}
	return ms, nil
}

// readAliases returns the exact aliases (no wildcards: the guest looks
// names up, it does not match patterns) that modules.alias at p gives the
// modules of index. An alias that is also a module's name is left out
// (the module wins, as in modprobe); an alias of two modules goes to the
// first line naming it.
func readAliases(p string, index map[string][]string) (map[string]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("reading module aliases (run depmod?): %w", err)
	}
	defer f.Close()
	aliases := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 3 || fields[0] != "alias" {
			return nil, fmt.Errorf("%s:%d: want \"alias <pattern> <module>\", got %q", p, line, text)
		}
		alias, mod := kmod.IndexName(fields[1]), kmod.IndexName(fields[2])
		if _, ok := index[mod]; !ok || strings.ContainsAny(alias, "*?[]") || kmod.CheckName(alias) != nil {
			continue
		}
		if _, isModule := index[alias]; isModule {
			continue
		}
		if _, taken := aliases[alias]; !taken {
			aliases[alias] = mod
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return aliases, nil
}

// addIndex adds the module files, the boot list, the index and the
// modprobe helper to an image's entries.
func (ms *moduleSet) addIndex(add func(string, *entry), modDir, guestModDir string) {
	for _, m := range append(slices.Clone(ms.boot), ms.onDemand...) {
		add(path.Join(guestModDir, m), &entry{mode: modeFile | 0o644, source: filepath.Join(modDir, m)})
	}
	list := "# Written by vmpod-image: load order, relative to " + guestModDir + ".\n" + strings.Join(ms.boot, "\n") + "\n"
	add(kmod.ListPath, &entry{mode: modeFile | 0o644, data: []byte(list)})
	add(kmod.IndexDir, &entry{mode: modeDir | 0o755})
	for name, files := range ms.index {
		add(path.Join(kmod.IndexDir, name), &entry{mode: modeFile | 0o644, data: []byte(strings.Join(files, "\n") + "\n")})
	}
	for alias, mod := range ms.aliases {
		add(path.Join(kmod.IndexDir, alias), &entry{mode: modeSymlink | 0o777, link: mod})
	}
	// The kernel runs its module helper (by default /sbin/modprobe) as
	// `modprobe -q -- <name>`; the agent acts as one when called so.
	add(kmod.HelperPath, &entry{mode: modeSymlink | 0o777, link: "/init"})
}
