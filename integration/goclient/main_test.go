// Package goclient drives the shim through containerd's own Go client
// (github.com/containerd/containerd v1.7), as containerd's client tests do.
//
// It is a module of its own: containerd 1.7's client package (its oci
// spec options) does not compile against runtime-spec v1.3, which vmpod's
// runc v1.5 needs. Here runtime-spec is held at containerd's v1.1; the
// shim and agent under test are still built from the main module by
// internal/testbin, with the main module's dependencies.
package goclient

import (
	"os"
	"testing"

	"github.com/vmpod/vmpod/integration/harness"
)

// TestMain removes what the tests built: the guest image and the binaries.
func TestMain(m *testing.M) {
	os.Exit(harness.RunVMTests(m))
}
