// Command containerd-shim-kata-v2 is vmpod's containerd shim v2: containerd
// runs it for the runtime "io.containerd.kata.v2", and it runs each pod, or
// each standalone container, in a VM of its own.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	cshim "github.com/containerd/containerd/runtime/v2/shim"

	"google.golang.org/protobuf/proto"

	"github.com/vmpod/vmpod/shim"
)

// RuntimeName is the runtime type containerd maps to this binary.
const RuntimeName = "io.containerd.kata.v2"

// stateRootEnv moves the sandboxes' state directories (tests).
const stateRootEnv = "VMPOD_STATE_ROOT"

func main() {
	if infoRequested(os.Args[1:]) {
		if err := writeInfo(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "%s -info: %v\n", filepath.Base(os.Args[0]), err)
			os.Exit(1)
		}
		return
	}
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

// infoRequested reports whether containerd 2.x asks for the runtime's
// features (`-info`, runtime options on stdin). It is looked for before
// containerd 1.7's shim package parses the flags, which has no -info and
// would reject it; containerd 1.6/1.7 never pass it.
func infoRequested(args []string) bool {
	for _, a := range args {
		switch a {
		case "-info", "--info", "-info=true", "--info=true":
			return true
		}
	}
	return false
}

// writeInfo prints the protobuf RuntimeInfo containerd 2.x reads from
// stdout. Nothing is started, and nothing but stdin is read.
func writeInfo(stdin io.Reader, stdout io.Writer) error {
	info, err := shim.Info(RuntimeName, stdin)
	if err != nil {
		return err
	}
	b, err := proto.Marshal(info)
	if err != nil {
		return fmt.Errorf("marshal runtime info: %w", err)
	}
	_, err = stdout.Write(b)
	return err
}
