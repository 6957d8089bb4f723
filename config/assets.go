package config

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// File names of the guest image, as `make image` writes them into out/ and
// `make install` into ShareDir.
const (
	KernelName = "vmpod-kernel"
	InitrdName = "vmpod-initrd.img"
)

// ShareDir is where `make install` puts the guest image (PREFIX/share/vmpod).
// It is a variable for tests and for packagers with another prefix.
var ShareDir = "/usr/local/share/vmpod"

// executable is os.Executable, replaced in tests.
var executable = os.Executable

// Paths are the files a VM needs, resolved and checked to exist.
type Paths struct {
	QEMU      string
	Kernel    string
	Initrd    string
	Virtiofsd string
	// VMM is the configured type's binary: QEMU's or cloud-hypervisor's.
	VMM string
}

// Resolve finds every file the configuration names or implies, for the
// configured hypervisor type.
func (c *Config) Resolve() (Paths, error) {
	var p Paths
	var err error
	if c.Hypervisor.Type == TypeCLH {
		if p.VMM, err = c.CLHBinary(); err != nil {
			return Paths{}, err
		}
	} else {
		if p.QEMU, err = c.QEMUBinary(); err != nil {
			return Paths{}, err
		}
		p.VMM = p.QEMU
	}
	if p.Kernel, err = c.KernelPath(); err != nil {
		return Paths{}, err
	}
	if p.Initrd, err = c.InitrdPath(); err != nil {
		return Paths{}, err
	}
	if p.Virtiofsd, err = c.VirtiofsdBinary(); err != nil {
		return Paths{}, err
	}
	return p, nil
}

// KernelPath is the configured type's kernel key (hypervisor.qemu.kernel
// or hypervisor.clh.kernel), which must exist when set, or else the first
// vmpod-kernel found in AssetDirs.
func (c *Config) KernelPath() (string, error) {
	return c.asset(c.Hypervisor.Section()+".kernel", c.Hypervisor.Selected().Kernel, KernelName)
}

// InitrdPath is the configured type's initrd key, which must exist when
// set, or else the first vmpod-initrd.img found in AssetDirs.
func (c *Config) InitrdPath() (string, error) {
	return c.asset(c.Hypervisor.Section()+".initrd", c.Hypervisor.Selected().Initrd, InitrdName)
}

// CLHBinary is hypervisor.clh.path, looked up on PATH if it is a name.
func (c *Config) CLHBinary() (string, error) {
	return c.program("hypervisor.clh.path", c.Hypervisor.CLH.Path)
}

// QEMUBinary is hypervisor.qemu.path, looked up on PATH if it is a name.
func (c *Config) QEMUBinary() (string, error) {
	return c.program("hypervisor.qemu.path", c.Hypervisor.QEMU.Path)
}

// VirtiofsdBinary is the configured type's virtiofsd_path, looked up on
// PATH if it is a name.
func (c *Config) VirtiofsdBinary() (string, error) {
	return c.program(c.Hypervisor.Section()+".virtiofsd_path", c.Hypervisor.Selected().VirtiofsdPath)
}

func (c *Config) asset(key, configured, name string) (string, error) {
	if configured != "" {
		if err := regularFile(configured); err != nil {
			return "", fmt.Errorf("config: %s in %s: %w", key, c.source(), err)
		}
		return configured, nil
	}
	p, err := FindAsset(name)
	if err != nil {
		return "", fmt.Errorf("%w (or set %s in %s)", err, key, c.source())
	}
	return p, nil
}

func (c *Config) program(key, configured string) (string, error) {
	p, err := exec.LookPath(configured)
	if err != nil {
		return "", fmt.Errorf("config: %s in %s: %w", key, c.source(), err)
	}
	return p, nil
}

func (c *Config) source() string {
	if c.Source == "" {
		return DefaultSource
	}
	return c.Source
}

// AssetDirs lists, in order, where FindAsset looks: ShareDir, then out/ of
// the build tree holding the running executable (<repo>/bin/x → <repo>/out),
// so that a freshly built shim finds a freshly built image.
func AssetDirs() []string {
	dirs := []string{ShareDir}
	if exe, err := executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "..", "out"))
	}
	return dirs
}

// FindAsset returns the first regular file called name in AssetDirs.
func FindAsset(name string) (string, error) {
	var tried []string
	for _, d := range AssetDirs() {
		p := filepath.Join(d, name)
		if regularFile(p) == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("config: %s not found; tried %s (run make image, or make install)", name, strings.Join(tried, ", "))
}

func regularFile(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w", p, errNotRegular)
	}
	return nil
}

var errNotRegular = errors.New("not a regular file")
