// Package kmod loads the kernel modules of the guest image. It runs in the
// guest: at boot, before anything needs vsock, virtio-fs or the network,
// it loads the modules the image lists (LoadListed); later, as the
// kernel's modprobe helper (Helper), it loads a module the kernel asks for
// by name or alias, such as the bridge for `brctl addbr`, from the image's
// index (IndexDir).
//
// The image builder writes the list (ListPath) with one module path per
// line, relative to /lib/modules/<release>, in load order: every module
// after the modules it depends on.
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ListPath is where the image keeps the module list.
const ListPath = "/etc/vmpod/modules"

// ModulesDir is the modules tree of the running kernel.
func ModulesDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])), nil
}

// LoadListed loads every module named in list, relative to dir. A module
// that is already loaded (or built in) is not an error. A missing list
// means the image has no modules.
func LoadListed(list, dir string) error {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.HasPrefix(name, "#") {
			continue
		}
		if err := Load(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return sc.Err()
}

// Load inserts one uncompressed module file.
func Load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}
