package kmod

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The on-demand index. The image builder writes one file per module in the
// image, IndexDir/<name>, listing the module's files in load order (its
// dependencies first, the module itself last), and one symlink per exact
// alias of those modules (rtnl-link-bridge -> bridge), so that the guest
// resolves what the kernel asks for with a lookup, not by parsing
// modules.dep and modules.alias. File names are IndexName's: '-' and '_'
// are one character, as for the kernel's module names and kmod's aliases.
const (
	IndexDir = "/etc/vmpod/modules.d"
	// HelperPath is the modprobe the kernel runs (the kernel's default);
	// in the image it is a symlink to /init, the agent, which acts as the
	// helper when called by that name.
	HelperPath = "/sbin/modprobe"
)

// Bounds on the index, which is read by the helper the kernel waits for.
const (
	maxNameLen   = 255 // a file name
	maxIndexFile = 64 << 10
	maxDeps      = 256
)

// ErrNotInIndex is returned for a name the image has no module for.
var ErrNotInIndex = errors.New("not in the image's module index")

// IndexName is the index's file name for a module name or alias.
func IndexName(name string) string { return strings.ReplaceAll(name, "-", "_") }

// CheckName fails unless name can be looked up in the index: a non-empty
// file name of printable characters, not "." or "..".
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty module name")
	case len(name) > maxNameLen:
		return fmt.Errorf("module name %.32q...: longer than %d bytes", name, maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("module name %q: not a name", name)
	}
	for _, r := range name {
		if r == '/' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("module name %q: invalid character %q", name, r)
		}
	}
	return nil
}

// Resolve looks name (a module name or an alias) up in the index in
// indexDir and returns the module's name and its files, relative to the
// modules tree, in load order.
func Resolve(indexDir, name string) (module string, files []string, err error) {
	if err := CheckName(name); err != nil {
		return "", nil, err
	}
	module = IndexName(name)
	p := filepath.Join(indexDir, module)
	st, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil, fmt.Errorf("module %s: %w", name, ErrNotInIndex)
	}
	if err != nil {
		return "", nil, fmt.Errorf("module %s: %w", name, err)
	}
	if st.Mode()&os.ModeSymlink != 0 {
		// An alias names its module, in the same directory.
		target, err := os.Readlink(p)
		if err != nil {
			return "", nil, fmt.Errorf("module %s: alias: %w", name, err)
		}
		if err := CheckName(target); err != nil {
			return "", nil, fmt.Errorf("module %s: alias %s: %w", name, p, err)
		}
		module, p = target, filepath.Join(indexDir, target)
		if st, err = os.Lstat(p); err != nil {
			return "", nil, fmt.Errorf("module %s (alias of %s): %w", name, module, err)
		}
	}
	if !st.Mode().IsRegular() {
		return "", nil, fmt.Errorf("module %s: index entry %s is not a regular file", name, p)
	}
	files, err = readEntry(p, module)
	if err != nil {
		return "", nil, fmt.Errorf("module %s: %w", name, err)
	}
	return module, files, nil
}

// readEntry reads and checks the index file p of module.
func readEntry(p, module string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIndexFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(b) > maxIndexFile {
		return nil, fmt.Errorf("index entry %s: larger than %d bytes", p, maxIndexFile)
	}
	var files []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(files) == maxDeps {
			return nil, fmt.Errorf("index entry %s: more than %d files", p, maxDeps)
		}
		if path.IsAbs(line) || path.Clean(line) != line || strings.HasPrefix(line, "../") || !strings.HasSuffix(line, ".ko") {
			return nil, fmt.Errorf("index entry %s:%d: %q is not a relative path of a .ko file", p, i+1, line)
		}
		files = append(files, line)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("index entry %s lists no module file", p)
	}
	// The module itself comes last, after its dependencies.
	if last := files[len(files)-1]; IndexName(strings.TrimSuffix(path.Base(last), ".ko")) != module {
		return nil, fmt.Errorf("index entry %s ends with %s, not with module %s", p, last, module)
	}
	return files, nil
}

// LoadByName loads a module, by name or alias, with its dependencies, as
// the index in indexDir lists them, from the modules tree modDir. Modules
// already loaded are not an error.
func LoadByName(indexDir, modDir, name string) error {
	module, files, err := Resolve(indexDir, name)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := Load(filepath.Join(modDir, f)); err != nil {
			return fmt.Errorf("module %s: %w", module, err)
		}
	}
	return nil
}
