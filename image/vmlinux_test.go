package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/internal/require"
)

func TestExtractVmlinux(t *testing.T) {
	kernel, err := FindKernel("")
	if err != nil {
		require.Missing(t, err)
	}
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVmlinux(kernel, out); err != nil {
		if errors.Is(err, ErrNoPVH) {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// Cross-check with the lz4 tool where it is installed.
	if _, err := exec.LookPath("unlz4"); err != nil {
		require.Missing(t, "no unlz4 for the cross-check (apt-get install lz4)")
	}
	raw, _ := os.ReadFile(kernel)
	payload, err := bzImagePayload(raw)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unlz4", "-c")
	cmd.Stdin = bytes.NewReader(payload)
	// unlz4 decodes everything and then exits 1 on the 4-byte size the
	// kernel build appends; its output is still complete.
	want, _ := cmd.Output()
	if len(want) == 0 {
		require.Missing(t, "unlz4 produced nothing")
	}
	if !bytes.Equal(got, want) {
		t.Errorf("extracted %d bytes differ from unlz4's %d", len(got), len(want))
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	dir := t.TempDir()
	notKernel := filepath.Join(dir, "not-a-kernel")
	os.WriteFile(notKernel, bytes.Repeat([]byte{1}, 4096), 0o644)
	if err := ExtractVmlinux(notKernel, filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), "HdrS") {
		t.Errorf("error %v", err)
	}
	if err := ExtractVmlinux(filepath.Join(dir, "missing"), filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("error %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Error("output written despite errors")
	}
}

func TestLZ4Block(t *testing.T) {
	// "abcabcabcabcX": literals "abc", match offset 3 length 9 (overlap),
	// then the final literal "X".
	block := []byte{0x35, 'a', 'b', 'c', 3, 0, 0x10, 'X'}
	got, err := lz4Block(nil, block, 100)
	if err != nil || string(got) != "abcabcabcabcX" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := lz4Block(nil, block, 5); err == nil {
		t.Error("output limit not enforced")
	}
	for _, bad := range [][]byte{
		{0x10, 'a', 0, 0},           // offset 0
		{0x10, 'a', 5, 0},           // offset beyond output
		{0xf0},                      // literal length runs off the end
		{0x30, 'a'},                 // literals beyond the block
		{0x10, 'a', 1},              // truncated offset
		{0x1f, 'a', 1, 0, 255, 255}, // match length runs off the end
	} {
		if out, err := lz4Block(nil, bad, 1<<20); err == nil {
			t.Errorf("block %x decoded to %q", bad, out)
		}
	}
}

func TestLZ4LegacyFrame(t *testing.T) {
	block := []byte{0x35, 'a', 'b', 'c', 3, 0, 0x10, 'X'}
	frame := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	frame = binary.LittleEndian.AppendUint32(frame, uint32(len(block)))
	frame = append(frame, block...)
	if got, err := lz4Legacy(binary.LittleEndian.AppendUint32(append([]byte(nil), frame...), 13), 1<<20); err != nil || string(got) != "abcabcabcabcX" {
		t.Errorf("with size trailer: %q, %v", got, err)
	}
	if _, err := lz4Legacy(binary.LittleEndian.AppendUint32(append([]byte(nil), frame...), 14), 1<<20); err == nil {
		t.Error("wrong size trailer accepted")
	}
	if _, err := lz4Legacy(frame[:len(frame)-2], 1<<20); err == nil {
		t.Error("truncated block accepted")
	}
}

// FuzzLZ4Legacy: corrupt input ends in an error, never a panic or an
// output beyond the limit.
func FuzzLZ4Legacy(f *testing.F) {
	frame := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	frame = binary.LittleEndian.AppendUint32(frame, 8)
	frame = append(frame, 0x35, 'a', 'b', 'c', 3, 0, 0x10, 'X')
	f.Add(frame)
	f.Add(binary.LittleEndian.AppendUint32(frame, 13))
	f.Fuzz(func(t *testing.T, data []byte) {
		data = append(binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic), data...)
		out, err := lz4Legacy(data, 1<<16)
		if err == nil && len(out) > 1<<16 {
			t.Fatalf("output %d bytes beyond the limit", len(out))
		}
	})
}
