package goclient

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"

	"github.com/vmpod/vmpod/integration/harness"
)

// vmpodEnv is a private containerd with the shim of this tree, the busybox
// image, and a vmpod configuration pointing at a freshly built guest.
type vmpodEnv struct {
	t         *testing.T
	c         *harness.Containerd
	image     string // the busybox reference
	stateRoot string // the shim's sandbox state root
	config    string // the vmpod configuration file
}

// newVMPodEnv starts it; extraConfig is appended to the vmpod
// configuration (TOML). When the test ends, nothing may be left.
func newVMPodEnv(t *testing.T, extraConfig string) *vmpodEnv {
	t.Helper()
	c, image, stateRoot, cfg := harness.StartVMPod(t, extraConfig)
	return &vmpodEnv{t: t, c: c, image: image, stateRoot: stateRoot, config: cfg}
}

// ctx is a context in the harness's namespace with a deadline.
func (e *vmpodEnv) ctx(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), harness.Namespace), timeout)
}

// isSubsequence reports whether want appears in got in order.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}
