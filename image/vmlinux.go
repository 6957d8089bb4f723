package image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vmpod/vmpod/kernel/kernelcheck"
)

// Under TCG, booting the uncompressed kernel ELF through its PVH entry
// skips both the firmware's bzImage loader and the in-guest decompression:
// measured here with the floor init, q35 2.0-2.7 s against 2.9-3.3 s and
// microvm 1.8-2.1 s against 2.1-2.6 s. QEMU takes either file for -kernel.

// Limits for decompressing a kernel: the payload is trusted more than
// guest input, but a corrupt file must still fail cleanly.
const (
	maxVmlinux      = 512 << 20
	lz4LegacyMagic  = 0x184c2102
	lz4LegacyBlock  = 8 << 20 // the legacy format's uncompressed block size
	bzImageMinSetup = 0x250
)

// ErrNoPVH means the kernel cannot be booted as an ELF by its PVH entry,
// or its payload is compressed in a format this package does not decode;
// use the bzImage as it is.
var ErrNoPVH = errors.New("kernel cannot be turned into a PVH-bootable ELF")

// ExtractVmlinux writes the uncompressed kernel ELF inside bzImage to out,
// after checking that it has a PVH entry point. Payloads compressed with
// LZ4 (Debian's cloud kernel) or gzip are supported; others give ErrNoPVH.
func ExtractVmlinux(bzImage, out string) error {
	raw, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("reading kernel: %w", err)
	}
	payload, err := bzImagePayload(raw)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", bzImage, err)
	}
	vmlinux, err := decompressPayload(payload)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", bzImage, err)
	}
	if err := checkPVH(vmlinux); err != nil {
		return fmt.Errorf("kernel %s: %w", bzImage, err)
	}
	return writeFileAtomic(out, vmlinux)
}

// bzImagePayload returns the compressed kernel of an x86 boot image
// (boot protocol 2.08 or later: payload_offset and payload_length).
func bzImagePayload(raw []byte) ([]byte, error) {
	if len(raw) < bzImageMinSetup || string(raw[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not an x86 bzImage (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(raw[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x too old to name its payload: %w", v, ErrNoPVH)
	}
	setupSects := int(raw[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := uint64(setupSects+1)*512 + uint64(binary.LittleEndian.Uint32(raw[0x248:]))
	n := uint64(binary.LittleEndian.Uint32(raw[0x24c:]))
	if off+n > uint64(len(raw)) {
		return nil, fmt.Errorf("payload [%d, %d) beyond the file's %d bytes", off, off+n, len(raw))
	}
	return raw[off : off+n], nil
}

func decompressPayload(p []byte) ([]byte, error) {
	switch {
	case len(p) >= 4 && binary.LittleEndian.Uint32(p) == lz4LegacyMagic:
		return lz4Legacy(p, maxVmlinux)
	case len(p) >= 2 && p[0] == 0x1f && p[1] == 0x8b:
		zr, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		out, err := io.ReadAll(io.LimitReader(zr, maxVmlinux+1))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("gunzip: %w", err)
		}
		if len(out) > maxVmlinux {
			return nil, fmt.Errorf("kernel larger than %d bytes", maxVmlinux)
		}
		return out, nil
	}
	return nil, fmt.Errorf("payload compression not supported (want LZ4 or gzip): %w", ErrNoPVH)
}

// lz4Legacy decodes the LZ4 legacy frame the kernel build uses (lz4 -l):
// a magic number, then blocks each prefixed with its compressed size. The
// kernel build appends the uncompressed size as 4 final bytes; it is
// checked when present.
func lz4Legacy(p []byte, max int) ([]byte, error) {
	var out []byte
	p = p[4:]
	for len(p) >= 4 {
		n := binary.LittleEndian.Uint32(p)
		if n == lz4LegacyMagic { // concatenated frames
			p = p[4:]
			continue
		}
		if len(p) == 4 { // the appended size
			if int(n) != len(out) {
				return nil, fmt.Errorf("lz4: decoded %d bytes, the image says %d", len(out), n)
			}
			return out, nil
		}
		p = p[4:]
		if uint64(n) > uint64(len(p)) {
			return nil, fmt.Errorf("lz4: block of %d bytes with %d left", n, len(p))
		}
		limit := len(out) + lz4LegacyBlock
		if limit > max {
			limit = max
		}
		var err error
		if out, err = lz4Block(out, p[:n], limit); err != nil {
			return nil, err
		}
		p = p[n:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("lz4: %d trailing bytes", len(p))
	}
	return out, nil
}

// lz4Block appends the decoded LZ4 block src to dst, which may reference
// earlier output of the same frame, without growing dst past limit.
func lz4Block(dst, src []byte, limit int) ([]byte, error) {
	errCorrupt := errors.New("lz4: corrupt block")
	readLen := func(i int, n int) (int, int, error) {
		for {
			if i >= len(src) {
				return 0, 0, errCorrupt
			}
			b := src[i]
			i++
			n += int(b)
			if n > limit {
				return 0, 0, errCorrupt
			}
			if b != 255 {
				return i, n, nil
			}
		}
	}
	i := 0
	for i < len(src) {
		token := src[i]
		i++
		lit := int(token >> 4)
		var err error
		if lit == 15 {
			if i, lit, err = readLen(i, lit); err != nil {
				return nil, err
			}
		}
		if lit > len(src)-i || lit > limit-len(dst) {
			return nil, errCorrupt
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) { // the last sequence has literals only
			return dst, nil
		}
		if i+2 > len(src) {
			return nil, errCorrupt
		}
		off := int(binary.LittleEndian.Uint16(src[i:]))
		i += 2
		if off == 0 || off > len(dst) {
			return nil, errCorrupt
		}
		match := int(token & 15)
		if match == 15 {
			if i, match, err = readLen(i, match); err != nil {
				return nil, err
			}
		}
		match += 4
		if match > limit-len(dst) {
			return nil, errCorrupt
		}
		start := len(dst) - off
		if off >= match {
			dst = append(dst, dst[start:start+match]...)
			continue
		}
		for k := 0; k < match; k++ { // overlapping: repeats the last off bytes
			dst = append(dst, dst[start+k])
		}
	}
	return dst, nil
}

// checkPVH accepts a decompressed kernel that QEMU boots by its PVH entry
// (kernelcheck.CheckPVH); one without the entry note is ErrNoPVH.
func checkPVH(vmlinux []byte) error {
	err := kernelcheck.CheckPVH(bytes.NewReader(vmlinux))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kernelcheck.ErrNotELF):
		return fmt.Errorf("decompressed kernel: %w", err)
	default:
		return fmt.Errorf("decompressed kernel: %w: %w", err, ErrNoPVH)
	}
}

// writeFileAtomic replaces path with data through a temporary file.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
