// Command containerd-shim-kata-v2 is vmpod's containerd shim v2: containerd
// runs it for the runtime "io.containerd.kata.v2", and it runs each pod, or
// each standalone container, in a VM of its own.
package main

import (
	"context"
	"os"

	cshim "github.com/containerd/containerd/runtime/v2/shim"

	"github.com/vmpod/vmpod/shim"
)

// RuntimeName is the runtime type containerd maps to this binary.
const RuntimeName = "io.containerd.kata.v2"

// stateRootEnv moves the sandboxes' state directories (tests).
const stateRootEnv = "VMPOD_STATE_ROOT"

func main() {
	if root := os.Getenv(stateRootEnv); root != "" {
		shim.StateRoot = root
	}
	shim.Register(shim.NewVMSandbox)
	// The shim's children (QEMU, virtiofsd, logging binaries) are waited
	// for by the code that starts them: no reaper, which would steal their
	// exit statuses, and no subreaper, since no container process runs on
	// the host.
	cshim.RunManager(context.Background(), shim.NewManager(RuntimeName), func(c *cshim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
