package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"github.com/vmpod/vmpod/hypervisor"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/vm"
)

// vmSandbox is a sandbox in a QEMU VM.
type vmSandbox struct {
	v      *vm.VM
	shared string
}

var _ Sandbox = (*vmSandbox)(nil)

// NewVMSandbox is the shim's SandboxFactory: it boots a VM sized for the
// first container, exporting <Dir>/shared by virtio-fs, and creates the
// sandbox in the guest with that share mounted.
func NewVMSandbox(ctx context.Context, req SandboxRequest) (Sandbox, error) {
	cfg := req.Config
	q := cfg.Hypervisor.QEMU
	paths, err := cfg.Resolve()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if cfg.Runtime.Debug {
		// The hypervisor logs the guest console, and the agent's logs with
		// it, at debug level, tagged with the sandbox (ctx carries it).
		log.G(ctx).Logger.SetLevel(logrus.DebugLevel)
	}
	shared := filepath.Join(req.Dir, SharedDirName)
	if err := os.Mkdir(shared, 0o711); err != nil {
		return nil, fmt.Errorf("create shared directory: %w", err)
	}
	size := SizeFor(q, req.Spec)
	log.G(ctx).WithFields(log.Fields{"vcpus": size.VCPUs, "memory_mib": size.MemoryMiB, "config": cfg.Source}).Debug("starting VM")
	hcfg := hypervisor.Config{
		Path:         paths.QEMU,
		Kernel:       paths.Kernel,
		Initrd:       paths.Initrd,
		KernelParams: q.KernelParams,
		Machine:      q.MachineType,
		Accel:        q.Accel,
		VCPUs:        int(size.VCPUs),
		MemoryMiB:    int(size.MemoryMiB),
	}
	v, err := vm.Start(ctx, vm.Config{
		ID:            req.ID,
		StateDir:      filepath.Join(req.Dir, "vm"),
		Hypervisor:    hcfg,
		VsockMode:     q.VsockMode,
		VirtiofsdPath: paths.Virtiofsd,
		SharedDir:     shared,
		DialTimeout:   cfg.Agent.DialTimeout.Duration,
		Debug:         cfg.Agent.Debug,
	})
	if err != nil {
		return nil, err
	}
	hostname := ""
	if req.Spec != nil {
		hostname = req.Spec.Hostname
	}
	_, err = v.Agent().CreateSandbox(ctx, &agentpb.CreateSandboxRequest{
		SandboxId: req.ID,
		Hostname:  hostname,
		Mounts:    []*agentpb.Mount{v.SharedMount()},
	})
	if err != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		if serr := v.Stop(sctx); serr != nil {
			log.G(ctx).WithError(serr).Warn("stop VM after failed sandbox creation")
		}
		return nil, fromAgent(err, "create sandbox %s in the guest", req.ID)
	}
	return &vmSandbox{v: v, shared: shared}, nil
}

func (s *vmSandbox) Agent() agentpb.AgentService { return s.v.Agent() }
func (s *vmSandbox) SharedDir() string           { return s.shared }
func (s *vmSandbox) GuestSharedDir() string      { return s.v.GuestSharedDir() }
func (s *vmSandbox) Done() <-chan struct{}       { return s.v.Done() }

// Stop stops the VM (its daemons and state go with it).
func (s *vmSandbox) Stop(ctx context.Context) error { return s.v.Stop(ctx) }
