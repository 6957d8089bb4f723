package shim

import (
	"os"
	"testing"

	"github.com/vmpod/vmpod/internal/testbin"
)

// TestMain removes the binaries the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}
