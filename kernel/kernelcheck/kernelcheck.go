// Package kernelcheck tells, before a VM boots, whether a guest kernel can
// run vmpod's guest: QEMU must be able to boot the file (a bzImage, or an
// ELF vmlinux with a PVH entry note), and the kernel must have vsock,
// virtio-fs and the rest of kconfig.GuestNeeds, built in or as modules.
// A kernel that lacks them would otherwise boot and hang until the agent
// dial times out.
//
// The kernel's configuration is read from the file next to it,
// <kernel>.config (the image builder writes it: cheap to read at every
// sandbox start), or else from the image itself (CONFIG_IKCONFIG). A kernel
// with neither cannot be checked; Check then says so without failing.
package kernelcheck

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/vmpod/vmpod/kernel/kconfig"
)

// ConfigSuffix names the configuration file kept next to a kernel.
const ConfigSuffix = ".config"

// maxKernel bounds the kernel file read when looking for an embedded
// configuration.
const maxKernel = 512 << 20

// Report says what Check found.
type Report struct {
	// Format is "vmlinux (PVH)" or "bzImage".
	Format string
	// ConfigFrom is where the configuration was read ("" when none was
	// found and the features are unchecked).
	ConfigFrom string
	// Modules reports whether the kernel can load modules.
	Modules bool
}

// ErrUnsuitable wraps every reason a kernel cannot run the guest.
var ErrUnsuitable = errors.New("guest kernel unsuitable for vmpod")

// Check reads the kernel at path. The error names the kernel and every
// missing feature and wraps ErrUnsuitable, or the file system's error.
func Check(path string) (Report, error) {
	var r Report
	f, err := os.Open(path)
	if err != nil {
		return r, fmt.Errorf("kernel %s: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 0x206)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return r, fmt.Errorf("kernel %s: %w", path, err)
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		if err := CheckPVH(f); err != nil {
			return r, fmt.Errorf("kernel %s: %w: %w", path, ErrUnsuitable, err)
		}
		r.Format = "vmlinux (PVH)"
	case len(head) >= 0x206 && string(head[0x202:0x206]) == "HdrS":
		r.Format = "bzImage"
	default:
		return r, fmt.Errorf("kernel %s is neither a bzImage nor an ELF vmlinux: %w", path, ErrUnsuitable)
	}
	cfg, from, err := readConfig(path, f)
	if err != nil {
		return r, err
	}
	if cfg == nil {
		return r, nil
	}
	r.ConfigFrom = from
	r.Modules = cfg["CONFIG_MODULES"] == "y"
	if missing := kconfig.Missing(cfg, kconfig.GuestNeeds); len(missing) > 0 {
		return r, fmt.Errorf("kernel %s: %w: its configuration (%s) lacks %s", path, ErrUnsuitable, from, joinList(missing))
	}
	return r, nil
}

// ReadConfig returns the configuration of the kernel at path and where it
// came from (<path>.config, else the image's CONFIG_IKCONFIG), or nil when
// there is none.
func ReadConfig(path string) (kconfig.Config, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("kernel %s: %w", path, err)
	}
	defer f.Close()
	return readConfig(path, f)
}

// readConfig returns the kernel's configuration and where it came from,
// or nil when there is none.
func readConfig(path string, kernel *os.File) (kconfig.Config, string, error) {
	side := path + ConfigSuffix
	if b, err := os.ReadFile(side); err == nil {
		cfg, err := kconfig.ParseConfig(bytes.NewReader(b))
		if err != nil {
			return nil, "", fmt.Errorf("kernel configuration %s: %w", side, err)
		}
		return cfg, side, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("kernel configuration: %w", err)
	}
	if _, err := kernel.Seek(0, io.SeekStart); err != nil {
		return nil, "", fmt.Errorf("kernel %s: %w", path, err)
	}
	cfg, err := kconfig.Embedded(io.LimitReader(kernel, maxKernel))
	if errors.Is(err, kconfig.ErrNoEmbedded) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("kernel %s: %w", path, err)
	}
	return cfg, "embedded in " + path, nil
}

// xenElfnotePhys32Entry is the ELF note type of the PVH entry point
// (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU needs to boot a vmlinux.
const xenElfnotePhys32Entry = 18

// ErrNotELF means CheckPVH was given something that is not an ELF file.
var ErrNotELF = errors.New("not a readable ELF")

// CheckPVH accepts an x86-64 ELF with a Xen PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU needs to boot it with -kernel.
func CheckPVH(r io.ReaderAt) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotELF, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("an ELF for %v, not x86-64", f.Machine)
	}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(io.LimitReader(prog.Open(), 1<<20))
		if err != nil {
			return fmt.Errorf("reading ELF notes: %w", err)
		}
		for len(notes) >= 12 {
			nameSz := int(binary.LittleEndian.Uint32(notes))
			descSz := int(binary.LittleEndian.Uint32(notes[4:]))
			typ := binary.LittleEndian.Uint32(notes[8:])
			end := 12 + align4(nameSz) + align4(descSz)
			if nameSz < 0 || descSz < 0 || end > len(notes) || end < 12 {
				break
			}
			if typ == xenElfnotePhys32Entry && bytes.Equal(bytes.TrimRight(notes[12:12+nameSz], "\x00"), []byte("Xen")) {
				return nil
			}
			notes = notes[end:]
		}
	}
	return errors.New("an ELF vmlinux without a PVH entry note (CONFIG_PVH): QEMU cannot boot it")
}

func align4(n int) int { return (n + 3) &^ 3 }

func joinList(items []string) string {
	switch len(items) {
	case 0:
		return ""
	case 1:
		return items[0]
	}
	var b bytes.Buffer
	for i, s := range items {
		switch {
		case i == len(items)-1:
			b.WriteString(" and ")
		case i > 0:
			b.WriteString(", ")
		}
		b.WriteString(s)
	}
	return b.String()
}
