// Package image builds the guest's initrd: a newc cpio archive whose /init
// is vmpod-agent, with the kernel modules the guest needs (resolved through
// modules.dep) and their load list in /etc/vmpod/modules, plus modules it
// loads only when the kernel asks (Options.OnDemand), indexed by name and
// alias in /etc/vmpod/modules.d for the agent's modprobe helper (see kmod).
//
// The archive is reproducible: entries are sorted, owned by 0:0, numbered
// in order and stamped with SOURCE_DATE_EPOCH (or 0), so building twice
// from the same inputs gives the same bytes.
//
// `make image` (cmd/vmpod-image) writes out/vmpod-initrd.img and, as
// out/vmpod-kernel, the kernel's uncompressed ELF (see ExtractVmlinux) or
// else the bzImage; `make install` puts them in InstallDir. The
// initrd is uncompressed by default: under TCG, gunzip in the guest costs
// more than reading the bigger file (BenchmarkInitrd in
// hypervisor/qemu, 16 MiB image: gzip was 0.1-1.0 s slower to boot in each
// of three runs on a busy 2-core host).
package image

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// File names of an installed or development image.
const (
	KernelName = "vmpod-kernel"
	InitrdName = "vmpod-initrd.img"
	// InstallDir is where `make install` puts the kernel and initrd.
	InstallDir = "/usr/local/share/vmpod"
)

// Compression of the initrd.
const (
	// CompressNone leaves the archive as it is: the kernel unpacks it with
	// a copy, which is the fastest under TCG where decompression is slow.
	CompressNone = "none"
	CompressGzip = "gzip"
)

// Options says what goes into an initrd.
type Options struct {
	// Init is a static binary installed as /init (vmpod-agent).
	Init string
	// Modules are module names to include with their dependencies and
	// load at boot; nil means DefaultModules.
	Modules []string
	// OnDemand are module names to include with their dependencies but
	// load only when the kernel asks for them (by name or alias); nil
	// means DefaultOnDemand, an empty slice none.
	OnDemand []string
	// KernelRelease chooses /lib/modules/<release>; empty means the
	// newest installed cloud kernel (DefaultRelease).
	KernelRelease string
	// ModulesRoot is the directory holding one modules tree per release;
	// empty means /lib/modules.
	ModulesRoot string
	// NoModules builds an image without modules, for a kernel with
	// everything the guest needs built in (vmpod's own, make kernel):
	// Modules, OnDemand and ModulesRoot are ignored, and KernelRelease is
	// only reported.
	NoModules bool
	// ExtraFiles maps guest paths to host files copied into the image.
	ExtraFiles map[string]string
	// Busybox, when set, is a static busybox installed as /bin/busybox with
	// a link per applet: a shell for debugging.
	Busybox string
	// Compression is CompressNone (default) or CompressGzip.
	Compression string
	// Output is the initrd's path; it is replaced atomically.
	Output string
}

// Result describes a built initrd.
type Result struct {
	Path          string
	Size          int64
	KernelRelease string
	// Files lists every entry's guest path, in archive order.
	Files []string
	// Modules lists the module files loaded at boot, in load order,
	// relative to /lib/modules/<release>.
	Modules []string
	// OnDemand lists the other module files, in load order.
	OnDemand []string
	// Aliases lists the aliases the guest resolves, as kmod.IndexName
	// spells them, sorted.
	Aliases []string
}

// guest directories the agent mounts on or writes to.
var baseDirs = []string{"/bin", "/dev", "/etc", "/etc/vmpod", "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var"}

// entry is one archive member.
type entry struct {
	mode   uint32 // type and permissions
	source string // host file for regular files, or ""
	data   []byte // content when source is ""
	link   string // symlink target
	rdev   [2]uint32
}

// BuildInitrd writes the initrd described by opts.
func BuildInitrd(opts Options) (Result, error) {
	if opts.Output == "" {
		return Result{}, errors.New("image: no output path")
	}
	if err := checkStatic(opts.Init); err != nil {
		return Result{}, fmt.Errorf("image: init: %w", err)
	}
	if opts.NoModules {
		if len(opts.Modules) > 0 || len(opts.OnDemand) > 0 {
			return Result{}, fmt.Errorf("image: modules %q requested for a kernel without modules", append(slices.Clone(opts.Modules), opts.OnDemand...))
		}
		mods := &moduleSet{index: map[string][]string{}}
		entries, err := collect(opts, "", "", mods)
		if err != nil {
			return Result{}, fmt.Errorf("image: %w", err)
		}
		size, err := writeArchive(opts.Output, opts.Compression, entries)
		if err != nil {
			return Result{}, fmt.Errorf("image: writing %s: %w", opts.Output, err)
		}
		return Result{Path: opts.Output, Size: size, KernelRelease: opts.KernelRelease, Files: sortedKeys(entries)}, nil
	}
	release := opts.KernelRelease
	if release == "" {
		r, err := DefaultRelease()
		if err != nil {
			return Result{}, err
		}
		release = r
	}
	root := opts.ModulesRoot
	if root == "" {
		root = "/lib/modules"
	}
	modDir := filepath.Join(root, release)
	names := opts.Modules
	if names == nil {
		names = DefaultModules
	}
	onDemand := opts.OnDemand
	if onDemand == nil {
		onDemand = DefaultOnDemand
	}
	mods, err := planModules(modDir, names, onDemand)
	if err != nil {
		return Result{}, fmt.Errorf("image: %w", err)
	}
	entries, err := collect(opts, release, modDir, mods)
	if err != nil {
		return Result{}, fmt.Errorf("image: %w", err)
	}
	size, err := writeArchive(opts.Output, opts.Compression, entries)
	if err != nil {
		return Result{}, fmt.Errorf("image: writing %s: %w", opts.Output, err)
	}
	return Result{Path: opts.Output, Size: size, KernelRelease: release, Files: sortedKeys(entries),
		Modules: mods.boot, OnDemand: mods.onDemand, Aliases: sortedKeys(mods.aliases)}, nil
}

func collect(opts Options, release, modDir string, mods *moduleSet) (map[string]*entry, error) {
	entries := map[string]*entry{}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = &entry{mode: modeDir | 0o755}
			}
		}
	}
	add := func(p string, e *entry) {
		entries[p] = e
		addDirs(p)
	}
	for _, d := range baseDirs {
		add(d, &entry{mode: modeDir | 0o755})
	}
	entries["/tmp"].mode = modeDir | 0o1777
	// The kernel opens /dev/console for init's stdio before init runs.
	add("/dev/console", &entry{mode: modeCharDev | 0o600, rdev: [2]uint32{5, 1}})
	add("/init", &entry{mode: modeFile | 0o755, source: opts.Init})
	if modDir != "" {
		guestModDir := path.Join("/lib/modules", release)
		add(guestModDir, &entry{mode: modeDir | 0o755})
		mods.addIndex(add, modDir, guestModDir)
	}
	if opts.Busybox != "" {
		if err := addBusybox(opts.Busybox, add); err != nil {
			return nil, err
		}
	}
	for _, guest := range sortedKeys(opts.ExtraFiles) {
		host := opts.ExtraFiles[guest]
		if !path.IsAbs(guest) || path.Clean(guest) != guest || guest == "/" {
			return nil, fmt.Errorf("extra file %q: guest path must be absolute and clean", guest)
		}
		st, err := os.Stat(host)
		if err != nil {
			return nil, fmt.Errorf("extra file %s: %w", guest, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("extra file %s: %s is not a regular file", guest, host)
		}
		add(guest, &entry{mode: modeFile | uint32(st.Mode().Perm()), source: host})
	}
	return entries, nil
}

func addBusybox(bb string, add func(string, *entry)) error {
	if err := checkStatic(bb); err != nil {
		return fmt.Errorf("busybox: %w", err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("listing applets of %s: %w", bb, err)
	}
	add("/bin/busybox", &entry{mode: modeFile | 0o755, source: bb})
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || applet == "init" || strings.Contains(applet, "/") {
			continue
		}
		add("/bin/"+applet, &entry{mode: modeSymlink | 0o777, link: "busybox"})
	}
	return nil
}

// writeArchive writes entries to out through a temporary file and returns
// the final size.
func writeArchive(out, compression string, entries map[string]*entry) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	var w io.Writer = tmp
	var gz *gzip.Writer
	switch compression {
	case "", CompressNone:
	case CompressGzip:
		// A zero header (no name, no time) keeps the output reproducible.
		gz, _ = gzip.NewWriterLevel(tmp, gzip.BestSpeed)
		w = gz
	default:
		return 0, fmt.Errorf("unknown compression %q (want %q or %q)", compression, CompressNone, CompressGzip)
	}
	mtime, err := sourceDateEpoch()
	if err != nil {
		return 0, err
	}
	cw := newCPIOWriter(w)
	for i, name := range sortedKeys(entries) {
		if err := writeEntry(cw, name, entries[name], uint32(i+1), mtime); err != nil {
			return 0, err
		}
	}
	if err := cw.Close(); err != nil {
		return 0, err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return 0, err
		}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return 0, err
	}
	st, err := tmp.Stat()
	if err != nil {
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	return st.Size(), os.Rename(tmp.Name(), out)
}

func writeEntry(cw *cpioWriter, name string, e *entry, ino, mtime uint32) error {
	h := cpioHeader{Name: strings.TrimPrefix(name, "/"), Mode: e.mode, Ino: ino, Mtime: mtime,
		RdevMajor: e.rdev[0], RdevMinor: e.rdev[1]}
	var body io.Reader
	switch {
	case e.mode&modeTypes == modeSymlink:
		h.Size = uint32(len(e.link))
		body = strings.NewReader(e.link)
	case e.mode&modeTypes != modeFile:
	case e.source != "":
		f, err := os.Open(e.source)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size() >= 1<<32 {
			return fmt.Errorf("%s: too large for cpio (%d bytes)", e.source, st.Size())
		}
		h.Size = uint32(st.Size())
		body = f
	default:
		h.Size = uint32(len(e.data))
		body = bytes.NewReader(e.data)
	}
	if err := cw.WriteHeader(h); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if body != nil {
		if err := cw.WriteData(body, int64(h.Size)); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// sourceDateEpoch is the mtime of every entry: $SOURCE_DATE_EPOCH or 0.
func sourceDateEpoch() (uint32, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
	}
	return uint32(v), nil
}

// checkStatic fails unless path is a statically linked ELF executable: the
// initrd has no dynamic loader or libraries.
func checkStatic(p string) error {
	if p == "" {
		return errors.New("no binary given")
	}
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the guest needs a static binary", p)
		}
	}
	return nil
}

// DefaultRelease is the newest installed Debian cloud kernel's release
// (the one with a /boot/vmlinuz-*-cloud-amd64).
func DefaultRelease() (string, error) {
	return newestRelease("/boot")
}

func newestRelease(boot string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(boot, "vmlinuz-*-cloud-amd64"))
	if len(matches) == 0 {
		return "", fmt.Errorf("no cloud kernel in %s (apt-get install linux-image-cloud-amd64)", boot)
	}
	rels := make([]string, len(matches))
	for i, m := range matches {
		rels[i] = strings.TrimPrefix(filepath.Base(m), "vmlinuz-")
	}
	sort.Slice(rels, func(i, j int) bool { return versionLess(rels[i], rels[j]) })
	return rels[len(rels)-1], nil
}

// versionLess compares releases such as 6.1.0-9-cloud-amd64 and
// 6.1.0-56-cloud-amd64 number by number.
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	pa, pb := split(a), split(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		na, ea := strconv.Atoi(pa[i])
		nb, eb := strconv.Atoi(pb[i])
		switch {
		case ea == nil && eb == nil && na != nb:
			return na < nb
		case (ea != nil || eb != nil) && pa[i] != pb[i]:
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

// FindKernel returns /boot/vmlinuz-<release>, or the newest cloud kernel's
// when release is empty.
func FindKernel(release string) (string, error) {
	if release == "" {
		r, err := DefaultRelease()
		if err != nil {
			return "", err
		}
		release = r
	}
	p := filepath.Join("/boot", "vmlinuz-"+release)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("kernel for release %s: %w", release, err)
	}
	return p, nil
}

// DefaultPaths lists where a kernel and initrd are looked for when the
// configuration names none, in order: the install directory, then the out/
// directory of a development tree whose bin/ holds the running binary.
func DefaultPaths() []string {
	dirs := []string{InstallDir}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(filepath.Dir(exe)), "out"))
	}
	return dirs
}

// Find returns the first kernel and initrd pair found in dirs.
func Find(dirs []string) (kernel, initrd string, err error) {
	for _, d := range dirs {
		k, i := filepath.Join(d, KernelName), filepath.Join(d, InitrdName)
		if fileExists(k) && fileExists(i) {
			return k, i, nil
		}
	}
	return "", "", fmt.Errorf("no %s and %s in %s (run `make image`)", KernelName, InitrdName, strings.Join(dirs, ", "))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
