package shim

import (
	"fmt"
	"os"
	"testing"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/internal/testbin"
)

// testCgroupParent holds the cgroups of the containers the tests run on
// the host: the host's cgroups belong to the host.
var testCgroupParent = fmt.Sprintf("/vmpod-test-shim-%d", os.Getpid())

// TestMain removes the binaries the tests built, and the cgroup parent
// libcontainer leaves (as runc leaves a container's parents).
func TestMain(m *testing.M) {
	code := testbin.Run(m)
	if g, err := hostcgroup.Open(testCgroupParent); err == nil {
		for _, dir := range g.Dirs() {
			if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
				fmt.Fprintf(os.Stderr, "cgroup %s left behind: %v\n", dir, err)
				code = 1
			}
		}
	}
	os.Exit(code)
}
