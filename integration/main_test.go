package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmpod/vmpod/internal/testbin"
)

// TestMain removes what the tests built once for the whole process: the
// guest image and the binaries.
func TestMain(m *testing.M) {
	code := testbin.RunVMs(m)
	if guestImage.initrd != "" {
		os.RemoveAll(filepath.Dir(guestImage.initrd))
	}
	os.Exit(code)
}
