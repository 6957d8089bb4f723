package integration

import (
	"os"
	"testing"

	"github.com/vmpod/vmpod/integration/harness"
)

// TestMain removes what the tests built once for the whole process: the
// guest image and the binaries.
func TestMain(m *testing.M) {
	os.Exit(harness.RunVMTests(m))
}
