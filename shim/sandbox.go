package shim

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/internal/mountns"
	agentpb "github.com/vmpod/vmpod/proto"
)

// StateRoot holds one directory per sandbox, <StateRoot>/<sandbox-id>, with
// the VM's sockets and the shared directory virtio-fs exports. A variable so
// that tests can move it.
var StateRoot = "/run/vmpod/sandboxes"

// Sandbox is where a shim's containers run: a VM with its agent, or, in
// tests of the service's own logic, an agent running on the host.
type Sandbox interface {
	// Agent is the client of the sandbox's agent.
	Agent() agentpb.AgentService
	// DialStdio opens a new connection to the agent's stdio stream port
	// (package stdiostream).
	DialStdio(ctx context.Context) (net.Conn, error)
	// SharedDir is the host directory the guest sees at GuestSharedDir.
	SharedDir() string
	GuestSharedDir() string
	// MountNS is the mount namespace of the sandbox's mounts, which
	// virtiofsd shares; nil: the shim's own.
	MountNS() *mountns.NS
	// Done is closed when the sandbox stopped, for whatever reason.
	Done() <-chan struct{}
	// Stop ends the sandbox and releases what it holds on the host.
	Stop(ctx context.Context) error
}

// SandboxRequest is what a SandboxFactory needs to start a sandbox.
type SandboxRequest struct {
	ID string
	// Dir is the sandbox's state directory (it exists, mode 0700).
	Dir    string
	Config *config.Config
	// Spec is the first container's spec, which sizes the VM.
	Spec *specs.Spec
	// KeepShimCgroup: the shim was put in a cgroup of its own choosing
	// (runc's ShimCgroup runtime option) and stays there; otherwise it
	// joins the sandbox's cgroup with the VM.
	KeepShimCgroup bool
	// NetNS is the pod's network namespace on the host, whose interfaces
	// the VM gets; "" for none (the VM has only lo).
	NetNS string
}

// SandboxFactory starts a sandbox. On error it leaves nothing running.
type SandboxFactory func(ctx context.Context, req SandboxRequest) (Sandbox, error)

// sandboxDir creates the state directory of sandbox id.
func sandboxDir(id string) (string, error) {
	dir := filepath.Join(StateRoot, id)
	if err := os.MkdirAll(StateRoot, 0o711); err != nil {
		return "", fmt.Errorf("create state root %s: %w", StateRoot, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("create sandbox state directory: %w", err)
	}
	return dir, nil
}
