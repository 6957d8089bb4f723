package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTree lays out an installed share dir and a build tree whose bin/
// holds the "running executable", and points the search at them.
func fakeTree(t *testing.T) (share, out string) {
	t.Helper()
	dir := t.TempDir()
	share = filepath.Join(dir, "usr/local/share/vmpod")
	repo := filepath.Join(dir, "src/vmpod")
	out = filepath.Join(repo, "out")
	exe := writeFile(t, filepath.Join(repo, "bin/containerd-shim-kata-v2"), "#!/bin/sh\n")
	// The shim is usually reached through a symlink (PATH, make install
	// of a dev tree): the search must follow it to the build tree.
	link := filepath.Join(dir, "usr/local/bin/containerd-shim-kata-v2")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, link); err != nil {
		t.Fatal(err)
	}
	oldShare, oldExe := ShareDir, executable
	ShareDir = share
	executable = func() (string, error) { return link, nil }
	t.Cleanup(func() { ShareDir, executable = oldShare, oldExe })
	return share, out
}

func TestAssetSearchOrder(t *testing.T) {
	share, out := fakeTree(t)
	cfg := defaults()

	// Nothing anywhere: the error lists every place tried, in order.
	_, err := cfg.KernelPath()
	if err == nil {
		t.Fatal("KernelPath found a kernel in an empty tree")
	}
	msg := err.Error()
	i, j := strings.Index(msg, filepath.Join(share, KernelName)), strings.Index(msg, filepath.Join(out, KernelName))
	if i < 0 || j < 0 || i > j || !strings.Contains(msg, "hypervisor.qemu.kernel") {
		t.Errorf("error %q should list %s then %s and name the key", msg, share, out)
	}

	// Only the dev build: found there.
	devKernel := writeFile(t, filepath.Join(out, KernelName), "k")
	devInitrd := writeFile(t, filepath.Join(out, InitrdName), "i")
	if p, err := cfg.KernelPath(); err != nil || p != devKernel {
		t.Errorf("KernelPath = %q, %v; want %q", p, err, devKernel)
	}
	if p, err := cfg.InitrdPath(); err != nil || p != devInitrd {
		t.Errorf("InitrdPath = %q, %v; want %q", p, err, devInitrd)
	}

	// Installed and dev build: the installed one wins.
	installed := writeFile(t, filepath.Join(share, KernelName), "k")
	if p, err := cfg.KernelPath(); err != nil || p != installed {
		t.Errorf("KernelPath = %q, %v; want %q", p, err, installed)
	}

	// A directory of the right name is not a kernel.
	if err := os.MkdirAll(filepath.Join(share, InitrdName), 0o755); err != nil {
		t.Fatal(err)
	}
	if p, err := cfg.InitrdPath(); err != nil || p != devInitrd {
		t.Errorf("InitrdPath = %q, %v; want %q (skipping a directory)", p, err, devInitrd)
	}

	// Configured: used as is, even though the search would find others.
	cfg.Hypervisor.QEMU.Kernel = writeFile(t, filepath.Join(t.TempDir(), "bzImage"), "k")
	if p, err := cfg.KernelPath(); err != nil || p != cfg.Hypervisor.QEMU.Kernel {
		t.Errorf("KernelPath = %q, %v; want the configured %q", p, err, cfg.Hypervisor.QEMU.Kernel)
	}
}

func TestConfiguredAssetMissing(t *testing.T) {
	fakeTree(t)
	cfg := defaults()
	cfg.Source = "/etc/vmpod/configuration.toml"
	cfg.Hypervisor.QEMU.Initrd = "/nonexistent/initrd.img"
	_, err := cfg.InitrdPath()
	for _, w := range []string{"hypervisor.qemu.initrd", "/nonexistent/initrd.img", cfg.Source} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("InitrdPath error %v should contain %q", err, w)
		}
	}
}

func TestPrograms(t *testing.T) {
	share, _ := fakeTree(t)
	writeFile(t, filepath.Join(share, KernelName), "k")
	writeFile(t, filepath.Join(share, InitrdName), "i")
	bin := t.TempDir()
	qemu := filepath.Join(bin, "qemu-system-x86_64")
	if err := os.WriteFile(qemu, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	virtiofsd := filepath.Join(bin, "virtiofsd")
	if err := os.WriteFile(virtiofsd, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)

	cfg := defaults()
	cfg.Hypervisor.QEMU.VirtiofsdPath = virtiofsd
	p, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Paths{QEMU: qemu, Kernel: filepath.Join(share, KernelName), Initrd: filepath.Join(share, InitrdName), Virtiofsd: virtiofsd, VMM: qemu}); p != want {
		t.Errorf("Resolve = %+v, want %+v", p, want)
	}

	for key, set := range map[string]func(*Config){
		"hypervisor.qemu.path":           func(c *Config) { c.Hypervisor.QEMU.Path = "qemu-system-riscv" },
		"hypervisor.qemu.virtiofsd_path": func(c *Config) { c.Hypervisor.QEMU.VirtiofsdPath = "/nonexistent/virtiofsd" },
	} {
		c := defaults()
		c.Hypervisor.QEMU.VirtiofsdPath = virtiofsd
		set(&c)
		if _, err := c.Resolve(); err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), DefaultSource) {
			t.Errorf("Resolve with a missing %s: err = %v, want one naming the key and %q", key, err, DefaultSource)
		}
	}
}
