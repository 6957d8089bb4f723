package ociimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testrootfs"
)

func TestBusyboxArchiveReproducible(t *testing.T) {
	a, err := Busybox()
	if errors.Is(err, testrootfs.ErrNoBusybox) {
		require.Missing(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	b, err := Busybox()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("two builds of the busybox archive differ")
	}
	names := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(a))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = true
	}
	for _, n := range []string{"oci-layout", "index.json", "blobs/sha256/"} {
		if !names[n] {
			t.Errorf("archive lacks %s", n)
		}
	}
}
