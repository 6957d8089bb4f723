package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/shim/hooks"
)

// NetnsName is the file, in a sandbox's state directory, that pins the
// network namespace the shim made for a container that asked for a new one
// without naming it (ctr, nerdctl). It goes with the directory.
const NetnsName = "netns"

// poststartKillWait bounds the wait for a container killed because its
// poststart hook failed.
const poststartKillWait = 10 * time.Second

// takeHooks removes the host hooks from spec (the guest runs the rest) and
// refuses those that cannot run, before anything starts.
func takeHooks(id, bundle string, spec *specs.Spec) (hooks.Host, specs.State, error) {
	h := hooks.Take(spec)
	if err := h.Check(); err != nil {
		return hooks.Host{}, specs.State{}, fmt.Errorf("container %s: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	state := specs.State{Version: spec.Version, ID: id, Bundle: bundle, Annotations: spec.Annotations}
	return h, state, nil
}

// runCreateHooks runs the createRuntime then the prestart hooks, as runc
// does while the container is being created.
func runCreateHooks(ctx context.Context, h hooks.Host, state specs.State, netns string) error {
	state.Status = specs.StateCreating
	if err := hooks.Run(ctx, hooks.CreateRuntime, h.CreateRuntime, state, netns); err != nil {
		return fmt.Errorf("container %s: %w", state.ID, err)
	}
	if err := hooks.Run(ctx, hooks.Prestart, h.Prestart, state, netns); err != nil {
		return fmt.Errorf("container %s: %w", state.ID, err)
	}
	return nil
}

// podNetns is the pod's network namespace on the host ("" for none).
func (s *service) podNetns() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.netns
}

// runPoststart runs c's poststart hooks once it started.
func (s *service) runPoststart(ctx context.Context, c *container) error {
	state := c.state
	state.Status = specs.StateRunning
	if err := hooks.Run(ctx, hooks.Poststart, c.hooks.Poststart, state, s.podNetns()); err != nil {
		return fmt.Errorf("container %s: %w", c.id, err)
	}
	return nil
}

// runPoststop runs c's poststop hooks once it is gone.
func (s *service) runPoststop(ctx context.Context, c *container) {
	runPoststop(ctx, c.hooks.Poststop, c.state, s.podNetns())
}

// runPoststop runs poststop hooks in netns, or in the shim's network
// namespace when netns is gone; a failure is logged, as the OCI spec asks.
func runPoststop(ctx context.Context, list []specs.Hook, state specs.State, netns string) {
	if netns != "" {
		if _, err := os.Stat(netns); err != nil {
			netns = ""
		}
	}
	state.Status = specs.StateStopped
	if err := hooks.Run(ctx, hooks.Poststop, list, state, netns); err != nil {
		log.G(ctx).WithError(err).WithField("id", state.ID).Warn("poststop hook failed")
	}
}

// poststopAfterCrash runs, for the delete action, the poststop hooks of a
// container whose shim died with the container's state still on the host
// (left is that state: the sandbox's directory, or a joined container's
// part of it). A shim that shut down normally ran them and removed left.
func poststopAfterCrash(ctx context.Context, id string, spec *specs.Spec, left, netns string) {
	if spec == nil || spec.Hooks == nil || len(spec.Hooks.Poststop) == 0 {
		return
	}
	if _, err := os.Stat(left); err != nil {
		return
	}
	bundle, err := os.Getwd() // the delete action runs in the bundle
	if err != nil {
		log.G(ctx).WithError(err).Warn("poststop hooks: no bundle")
		return
	}
	state := specs.State{Version: spec.Version, ID: id, Bundle: bundle, Annotations: spec.Annotations}
	runPoststop(ctx, spec.Hooks.Poststop, state, netns)
}

// sandboxNetns is where a sandbox's own network namespace is pinned.
func sandboxNetns(dir string) string { return filepath.Join(dir, NetnsName) }
