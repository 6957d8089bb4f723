package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/shim/hooks"
	"github.com/vmpod/vmpod/shim/rootfs"
	"github.com/vmpod/vmpod/sizing"
)

// container is one container of the sandbox: its init process, its execs
// and what it mounted on the host.
type container struct {
	id     string
	bundle string
	layout rootfs.Layout
	init   *process
	// hooks are the container's host hooks, state the OCI state they get.
	hooks hooks.Host
	state specs.State
	// podSandbox: the CRI sandbox (pause) container, whose resources the
	// VM's hot-plug sizing leaves out.
	podSandbox bool
	// demand is what the container's resources ask of the VM (growFor);
	// set at create, replaced by an update. guarded by the service's mu
	demand sizing.Size

	mu    sync.Mutex
	execs map[string]*process // guarded by mu
	// oomReported says a TaskOOM was queued for this container.
	oomReported bool // guarded by mu
}

func (c *container) process(execID string) (*process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %s of container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (c *container) addExec(p *process) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[p.execID]; ok {
		return fmt.Errorf("exec %s of container %s: %w", p.execID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[p.execID] = p
	return nil
}

func (c *container) removeExec(execID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.execs, execID)
}

// waitExecs waits, for at most grace, until every started exec has had its
// exit published: containerd must see an exec's TaskExit before the init's.
func (c *container) waitExecs(ctx context.Context, grace time.Duration) {
	c.mu.Lock()
	var running []*process
	for _, p := range c.execs {
		if st, _, _, _ := p.state(); st == task.Status_RUNNING || st == task.Status_PAUSED {
			running = append(running, p)
		}
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	for _, p := range running {
		if p.wait(ctx) != nil {
			return
		}
	}
}

// markOOM records that a TaskOOM is queued and reports whether one was
// already queued.
func (c *container) markOOM() (already bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	already = c.oomReported
	c.oomReported = true
	return already
}
