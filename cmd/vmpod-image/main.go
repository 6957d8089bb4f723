// Command vmpod-image builds the guest image: it writes the initrd (with
// vmpod-agent as /init) and copies the kernel next to it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vmpod-image:", err)
		os.Exit(1)
	}
}

func run() error {
	agent := flag.String("agent", "bin/vmpod-agent", "static `binary` installed as the guest's /init")
	out := flag.String("out", "out", "output `directory` for "+image.InitrdName+" and "+image.KernelName)
	release := flag.String("kernel-release", "", "kernel `release` whose modules go into the image (default: newest /boot/vmlinuz-*-cloud-amd64)")
	compression := flag.String("compression", image.CompressNone, "initrd compression: none or gzip")
	debug := flag.Bool("debug", false, "add a static busybox (/bin/busybox and its applets) for a debug shell")
	busybox := flag.String("busybox", "/bin/busybox", "static busybox `binary` used with -debug")
	bootModules := flag.String("modules", strings.Join(image.DefaultModules, ","), "comma-separated `modules` loaded at boot (with their dependencies)")
	onDemand := flag.String("on-demand", strings.Join(image.DefaultOnDemand, ","), "comma-separated `modules` carried but loaded only when the kernel asks for them, by name or alias (empty: none)")
	kernelPath := flag.String("kernel", "", "guest kernel `file` to ship as it is (vmpod's own, from make kernel) instead of Debian's cloud kernel; its configuration is read from <file>.config or the image, and a kernel without module support gets an initrd without modules")
	kernelFormat := flag.String("kernel-format", "vmlinux", "kernel written to the output: vmlinux (the uncompressed ELF, booted by its PVH entry: faster under TCG; falls back to the bzImage when the kernel cannot) or bzimage")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: vmpod-image [flags]\n\n"+
			"Writes <out>/%s (a reproducible newc cpio: the agent as /init plus the kernel\n"+
			"modules it loads at boot, see /etc/vmpod/modules in the image, and those it\n"+
			"loads on demand, indexed in /etc/vmpod/modules.d) and copies the kernel\n"+
			"(or its uncompressed ELF, see -kernel-format) to <out>/%s.\n"+
			"SOURCE_DATE_EPOCH sets the entries' mtime (default 0).\n\n",
			image.InitrdName, image.KernelName)
		flag.PrintDefaults()
	}
	flag.Parse()
	if *kernelFormat != "vmlinux" && *kernelFormat != "bzimage" {
		return fmt.Errorf("-kernel-format %q: want vmlinux or bzimage", *kernelFormat)
	}
	if flag.NArg() != 0 {
		flag.Usage()
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	bb := ""
	if *debug {
		bb = *busybox
	}
	if *kernelPath != "" {
		explicit := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
		if explicit["kernel-release"] || explicit["kernel-format"] {
			return errors.New("-kernel ships the kernel as it is: -kernel-release and -kernel-format do not apply")
		}
		return ownKernel(*kernelPath, *out, image.Options{
			Init:        *agent,
			Modules:     splitList(*bootModules),
			OnDemand:    splitList(*onDemand),
			Compression: *compression,
			Output:      filepath.Join(*out, image.InitrdName),
			Busybox:     bb,
		}, explicit["modules"] || explicit["on-demand"])
	}
	opts := image.Options{
		Init:          *agent,
		Modules:       splitList(*bootModules),
		OnDemand:      splitList(*onDemand),
		KernelRelease: *release,
		Compression:   *compression,
		Output:        filepath.Join(*out, image.InitrdName),
	}
	opts.Busybox = bb
	res, err := image.BuildInitrd(opts)
	if err != nil {
		return err
	}
	kernel, err := image.FindKernel(res.KernelRelease)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %d bytes, %d entries, %d modules at boot, %d on demand, %d aliases (kernel %s)\n",
		res.Path, res.Size, len(res.Files), len(res.Modules), len(res.OnDemand), len(res.Aliases), res.KernelRelease)
	kernelOut := filepath.Join(*out, image.KernelName)
	// The configuration next to the kernel is what vmpod check and the
	// shim read to see that the kernel has vsock, virtio-fs and the rest.
	if err := copyConfig("/boot/config-"+res.KernelRelease, kernelOut+kernelcheck.ConfigSuffix); err != nil {
		return err
	}
	if *kernelFormat == "vmlinux" {
		err := image.ExtractVmlinux(kernel, kernelOut)
		if err == nil {
			fmt.Printf("%s: uncompressed ELF (PVH entry) from %s\n", kernelOut, kernel)
			return nil
		}
		if !errors.Is(err, image.ErrNoPVH) {
			return err
		}
		fmt.Printf("%s: using the bzImage: %v\n", kernelOut, err)
	}
	if err := copyFile(kernel, kernelOut); err != nil {
		return err
	}
	fmt.Printf("%s: copied from %s\n", kernelOut, kernel)
	return nil
}

// ownKernel writes an image for a kernel given as a file: the kernel is
// checked (PVH entry when an ELF; vsock, virtio-fs and the rest of what the
// guest needs) and copied with its configuration, and the initrd carries
// no modules when the kernel cannot load any. modulesSet says -modules or
// -on-demand was given explicitly, which such a kernel refuses.
func ownKernel(kernel, out string, opts image.Options, modulesSet bool) error {
	rep, err := kernelcheck.Check(kernel)
	if err != nil {
		return err
	}
	if rep.ConfigFrom == "" {
		return fmt.Errorf("kernel %s: no configuration to check it against (%s%s, or CONFIG_IKCONFIG)", kernel, kernel, kernelcheck.ConfigSuffix)
	}
	if rep.Modules {
		return fmt.Errorf("kernel %s can load modules (CONFIG_MODULES=y): -kernel takes a kernel with everything built in (make kernel); for Debian's kernel use -kernel-release", kernel)
	}
	if modulesSet && (len(opts.Modules) > 0 || len(opts.OnDemand) > 0) {
		return fmt.Errorf("kernel %s has no module support: -modules and -on-demand must be empty", kernel)
	}
	opts.Modules, opts.OnDemand, opts.NoModules = nil, nil, true
	res, err := image.BuildInitrd(opts)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %d bytes, %d entries, no modules (everything built into %s)\n", res.Path, res.Size, len(res.Files), kernel)
	kernelOut := filepath.Join(out, image.KernelName)
	if err := copyFile(kernel, kernelOut); err != nil {
		return err
	}
	cfgFrom := kernel + kernelcheck.ConfigSuffix
	if _, err := os.Stat(cfgFrom); err == nil {
		if err := copyFile(cfgFrom, kernelOut+kernelcheck.ConfigSuffix); err != nil {
			return err
		}
	} else if err := os.Remove(kernelOut + kernelcheck.ConfigSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err // the configuration is embedded: a stale file next to it would win
	}
	fmt.Printf("%s: %s, copied from %s\n", kernelOut, rep.Format, kernel)
	return nil
}

// copyConfig copies a kernel's configuration next to the image's kernel,
// or removes a stale one when the kernel has none.
func copyConfig(src, dst string) error {
	if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
		if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return copyFile(src, dst)
}

// splitList splits a comma-separated flag value; "" is an empty, non-nil
// list (none, not the default).
func splitList(s string) []string {
	out := []string{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// copyFile replaces dst with a copy of src through a temporary file.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copying %s: %w", src, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}
