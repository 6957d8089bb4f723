package kernelcheck

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeELF is a minimal x86-64 ELF whose only program header is a PT_NOTE
// holding one note of type typ named "Xen" (18 is the PVH entry).
func fakeELF(typ uint32) []byte {
	note := new(bytes.Buffer)
	binary.Write(note, binary.LittleEndian, []uint32{4, 4, typ})
	note.WriteString("Xen\x00")
	binary.Write(note, binary.LittleEndian, uint32(0x1000000))
	const ehsize, phsize = 64, 56
	b := new(bytes.Buffer)
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	le := func(v any) { binary.Write(b, binary.LittleEndian, v) }
	le(uint16(2))  // ET_EXEC
	le(uint16(62)) // EM_X86_64
	le(uint32(1))
	le(uint64(0))      // entry
	le(uint64(ehsize)) // phoff
	le(uint64(0))      // shoff
	le(uint32(0))
	le(uint16(ehsize))
	le(uint16(phsize))
	le(uint16(1)) // phnum
	le(uint16(64))
	le(uint16(0))
	le(uint16(0))
	le(uint32(4)) // PT_NOTE
	le(uint32(4))
	le(uint64(ehsize + phsize)) // offset
	le(uint64(0))
	le(uint64(0))
	le(uint64(note.Len()))
	le(uint64(note.Len()))
	le(uint64(4))
	b.Write(note.Bytes())
	return b.Bytes()
}

func fakeBzImage(extra []byte) []byte {
	bz := make([]byte, 0x400)
	copy(bz[0x202:], "HdrS")
	return append(bz, extra...)
}

func ikconfig(t *testing.T, text string) []byte {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write([]byte(text))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return append(append([]byte("IKCFG_ST"), z.Bytes()...), "IKCFG_ED"...)
}

const complete = `CONFIG_VIRTIO_VSOCKETS=y
CONFIG_VIRTIO_FS=y
CONFIG_OVERLAY_FS=m
CONFIG_VIRTIO_MMIO=y
# CONFIG_VIRTIO_PCI is not set
CONFIG_MEMCG=y
CONFIG_SECCOMP_FILTER=y
CONFIG_BLK_DEV_INITRD=y
`

func write(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	lacking := strings.NewReplacer("CONFIG_VIRTIO_VSOCKETS=y\n", "", "CONFIG_VIRTIO_FS=y", "# CONFIG_VIRTIO_FS is not set").Replace(complete)

	good := write(t, dir, "good", fakeELF(18))
	write(t, dir, "good.config", []byte(complete))
	r, err := Check(good)
	if err != nil || r.Format != "vmlinux (PVH)" || r.ConfigFrom != good+".config" {
		t.Errorf("complete vmlinux: %+v, %v", r, err)
	}

	bad := write(t, dir, "bad", fakeELF(18))
	write(t, dir, "bad.config", []byte(lacking))
	_, err = Check(bad)
	if !errors.Is(err, ErrUnsuitable) || !strings.Contains(err.Error(), "vsock (the agent's connection) (CONFIG_VIRTIO_VSOCKETS)") ||
		!strings.Contains(err.Error(), "virtio-fs") || !strings.Contains(err.Error(), bad) {
		t.Errorf("config lacking vsock and virtio-fs: %v", err)
	}

	noPVH := write(t, dir, "nopvh", fakeELF(17))
	if _, err := Check(noPVH); !errors.Is(err, ErrUnsuitable) || !strings.Contains(err.Error(), "PVH") {
		t.Errorf("ELF without the PVH note: %v", err)
	}

	emb := write(t, dir, "embedded", fakeBzImage(ikconfig(t, lacking)))
	if _, err := Check(emb); !errors.Is(err, ErrUnsuitable) || !strings.Contains(err.Error(), "embedded in "+emb) ||
		!strings.Contains(err.Error(), "CONFIG_VIRTIO_VSOCKETS") {
		t.Errorf("embedded config lacking vsock: %v", err)
	}
	embOK := write(t, dir, "embedded-ok", fakeBzImage(ikconfig(t, complete)))
	if r, err := Check(embOK); err != nil || r.ConfigFrom != "embedded in "+embOK || r.Format != "bzImage" {
		t.Errorf("embedded complete config: %+v, %v", r, err)
	}

	unknown := write(t, dir, "unknown", fakeBzImage(nil))
	if r, err := Check(unknown); err != nil || r.ConfigFrom != "" {
		t.Errorf("no configuration anywhere: %+v, %v (want unchecked, no error)", r, err)
	}

	text := write(t, dir, "text", []byte("#!/bin/sh\n"))
	if _, err := Check(text); !errors.Is(err, ErrUnsuitable) || !strings.Contains(err.Error(), "neither a bzImage nor an ELF") {
		t.Errorf("text file: %v", err)
	}
	if _, err := Check(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
