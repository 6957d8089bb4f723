package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/internal/require"
)

// readCPIO parses a newc archive into headers and contents. It exists for
// tests and for checking an image after building it; maxSize bounds each
// entry's data.
func readCPIO(r io.Reader, maxSize uint32) ([]cpioHeader, map[string][]byte, error) {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		off += int64(n)
		return b, err
	}
	skipPad := func() error {
		if rem := off % 4; rem != 0 {
			_, err := read(int(4 - rem))
			return err
		}
		return nil
	}
	var hdrs []cpioHeader
	data := map[string][]byte{}
	for {
		raw, err := read(110)
		if err != nil {
			return nil, nil, fmt.Errorf("cpio header at %d: %w", off, err)
		}
		if string(raw[:6]) != newcMagic {
			return nil, nil, fmt.Errorf("cpio header at %d: bad magic %q", off-110, raw[:6])
		}
		var f [13]uint32
		for i := range f {
			if _, err := fmt.Sscanf(string(raw[6+8*i:14+8*i]), "%08x", &f[i]); err != nil {
				return nil, nil, fmt.Errorf("cpio header at %d field %d: %w", off-110, i, err)
			}
		}
		nameSize := f[11]
		if nameSize == 0 || nameSize > 4096 {
			return nil, nil, fmt.Errorf("cpio: name size %d out of range", nameSize)
		}
		name, err := read(int(nameSize))
		if err != nil {
			return nil, nil, err
		}
		if err := skipPad(); err != nil {
			return nil, nil, err
		}
		h := cpioHeader{Name: strings.TrimRight(string(name), "\x00"), Ino: f[0], Mode: f[1], Nlink: f[4],
			Mtime: f[5], Size: f[6], RdevMajor: f[9], RdevMinor: f[10]}
		if h.Name == trailerName {
			return hdrs, data, nil
		}
		if h.Size > maxSize {
			return nil, nil, fmt.Errorf("cpio entry %s: size %d over limit %d", h.Name, h.Size, maxSize)
		}
		body, err := read(int(h.Size))
		if err != nil {
			return nil, nil, fmt.Errorf("cpio entry %s: %w", h.Name, err)
		}
		if err := skipPad(); err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		hdrs = append(hdrs, h)
		data[h.Name] = body
	}
}

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	cw := newCPIOWriter(&buf)
	files := []struct {
		h    cpioHeader
		data string
	}{
		{cpioHeader{Name: "dir", Mode: modeDir | 0o755, Ino: 1}, ""},
		{cpioHeader{Name: "dir/a", Mode: modeFile | 0o644, Ino: 2}, "hello"},
		{cpioHeader{Name: "dir/odd-length-name", Mode: modeFile | 0o600, Ino: 3, Mtime: 7}, "abc"},
		{cpioHeader{Name: "link", Mode: modeSymlink | 0o777, Ino: 4}, "dir/a"},
		{cpioHeader{Name: "dev/console", Mode: modeCharDev | 0o600, Ino: 5, RdevMajor: 5, RdevMinor: 1}, ""},
	}
	for _, f := range files {
		h := f.h
		h.Size = uint32(len(f.data))
		if err := cw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if err := cw.WriteData(strings.NewReader(f.data), int64(len(f.data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%512 != 0 {
		t.Errorf("archive length %d is not a multiple of 512", buf.Len())
	}
	hdrs, data, err := readCPIO(bytes.NewReader(buf.Bytes()), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(hdrs) != len(files) {
		t.Fatalf("read %d entries, wrote %d", len(hdrs), len(files))
	}
	for i, f := range files {
		h := hdrs[i]
		if h.Name != f.h.Name || h.Mode != f.h.Mode || h.Ino != f.h.Ino || h.Mtime != f.h.Mtime ||
			h.RdevMajor != f.h.RdevMajor || h.RdevMinor != f.h.RdevMinor {
			t.Errorf("entry %d: got %+v, want %+v", i, h, f.h)
		}
		if string(data[h.Name]) != f.data {
			t.Errorf("entry %s: data %q, want %q", h.Name, data[h.Name], f.data)
		}
	}

	// GNU cpio must agree that this is a valid newc archive.
	if _, err := exec.LookPath("cpio"); err != nil {
		require.Missing(t, "cpio not installed; skipping the cross-check")
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	want := "dir\ndir/a\ndir/odd-length-name\nlink\ndev/console\n"
	if string(out) != want {
		t.Errorf("cpio -it listed %q, want %q", out, want)
	}
}

func TestCPIORejectsBadNames(t *testing.T) {
	cw := newCPIOWriter(io.Discard)
	for _, name := range []string{"", "a\x00b"} {
		if err := cw.WriteHeader(cpioHeader{Name: name}); err == nil {
			t.Errorf("name %q: no error", name)
		}
	}
}

func TestReadCPIOTruncated(t *testing.T) {
	var buf bytes.Buffer
	cw := newCPIOWriter(&buf)
	cw.WriteHeader(cpioHeader{Name: "f", Mode: modeFile, Size: 4})
	cw.WriteData(strings.NewReader("data"), 4)
	cw.Close()
	if _, _, err := readCPIO(bytes.NewReader(buf.Bytes()[:100]), 1<<20); err == nil {
		t.Error("truncated archive read without error")
	}
}
