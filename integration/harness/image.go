package harness

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/vmpod/vmpod/internal/ociimage"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testrootfs"
)

// BusyboxRef is the name ImportBusybox gives the test image.
const BusyboxRef = ociimage.BusyboxRef

var busybox struct {
	once sync.Once
	tar  []byte
	err  error
}

// ImportBusybox imports a busybox image named BusyboxRef into c's
// namespace and returns the reference. The image archive is built once per
// test process, in memory.
func ImportBusybox(t testing.TB, c *Containerd) string {
	t.Helper()
	archive := Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), DefaultCtrTimeout)
	defer cancel()
	if _, _, err := c.CtrStdin(ctx, bytes.NewReader(archive), "images", "import", "-"); err != nil {
		t.Fatal(err)
	}
	out, _, err := c.Ctr(ctx, "images", "list", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains("\n"+out, "\n"+BusyboxRef+"\n") {
		t.Fatalf("imported busybox, but images are %q", out)
	}
	return BusyboxRef
}

// BusyboxArchive returns the OCI image layout (as a tar stream) that
// ImportBusybox imports, for tests that import it their own way.
func BusyboxArchive() ([]byte, error) {
	busybox.once.Do(func() { busybox.tar, busybox.err = ociimage.Busybox() })
	return busybox.tar, busybox.err
}

// Busybox returns BusyboxArchive's archive. A missing busybox-static is a
// missing requirement (require.Missing); any other error, such as a bug in
// internal/ociimage, fails t.
func Busybox(t testing.TB) []byte {
	t.Helper()
	archive, err := BusyboxArchive()
	if err != nil {
		if errors.Is(err, testrootfs.ErrNoBusybox) {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	return archive
}
