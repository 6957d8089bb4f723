package shim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/errdefs"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/network"
	"github.com/vmpod/vmpod/podconfig"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/shim/rootfs"
	"github.com/vmpod/vmpod/sizing"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// ensureSandbox returns the shim's sandbox, starting it for the first
// container: a container of a pod joins the sandbox its sandbox container
// started, any other container starts one. prepare runs first, with the
// pod's network namespace on the host: for a new sandbox before the VM
// boots and its network is read, so that what a createRuntime hook
// configured there reaches the guest. The caller holds lifecycleMu.
func (s *service) ensureSandbox(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec, prepare func(ctx context.Context, netns string) error) (Sandbox, error) {
	role, err := roleOf(r.ID, spec)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	sb, sbID, netns := s.sandbox, s.sandboxID, s.netns
	s.mu.Unlock()
	switch {
	case role.joins && sb == nil:
		return nil, fmt.Errorf("container %s: sandbox %s is not running in this shim: %w", r.ID, role.sandboxID, errdefs.ErrNotFound)
	case role.joins && sbID != role.sandboxID:
		return nil, fmt.Errorf("container %s: sandbox %s is not running in this shim, which serves sandbox %s: %w", r.ID, role.sandboxID, sbID, errdefs.ErrNotFound)
	case role.joins:
		return sb, prepare(ctx, netns)
	case sb != nil && role.criSandbox:
		return nil, fmt.Errorf("sandbox container %s: this shim already runs sandbox %s: %w", r.ID, sbID, errdefs.ErrAlreadyExists)
	case sb != nil:
		// A container outside CRI given this shim's address (tests of
		// the service) shares the sandbox there is.
		return sb, prepare(ctx, netns)
	}
	path, err := configPath(r.Options)
	if err != nil {
		return nil, err
	}
	cfg, err := s.opts.LoadConfig(path)
	if err != nil {
		return nil, fmt.Errorf("load vmpod configuration: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	// The pod's Kata annotations, where enable_annotations allows them.
	if cfg, err = podconfig.Apply(ctx, cfg, spec.Annotations); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w: %w", role.sandboxID, err, errdefs.ErrInvalidArgument)
	}
	// A pod's sandbox container, or a container with no pod, gets a
	// sandbox named after it.
	id := role.sandboxID
	dir, err := sandboxDir(id)
	if err != nil {
		return nil, err
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox", id))
	// The start action put the shim in runc's ShimCgroup, if one was
	// asked for: then it stays there (see joinCgroup).
	shimCgroup, err := shimCgroupOf(r.Options)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	// Removing dir unmounts the network namespace made there, if any.
	fail := func(err error) (Sandbox, error) {
		if rerr := rootfs.Remove(ctx, nil, dir); rerr != nil {
			log.G(ctx).WithError(rerr).Warn("clean up after failed sandbox start")
		}
		return nil, err
	}
	netns = network.NamespacePath(spec)
	if netns == "" && network.WantsNewNamespace(spec) {
		netns = sandboxNetns(dir)
		if err := network.NewNamespace(netns); err != nil {
			return fail(fmt.Errorf("sandbox %s: %w", id, err))
		}
	}
	if err := prepare(ctx, netns); err != nil {
		return fail(err)
	}
	sb, err = s.opts.NewSandbox(ctx, SandboxRequest{ID: id, Dir: dir, Config: cfg, Spec: spec, NetNS: netns, KeepShimCgroup: shimCgroup != ""})
	if err != nil {
		return fail(fmt.Errorf("start sandbox %s: %w", id, err))
	}
	s.mu.Lock()
	s.sandbox, s.sandboxID, s.sandboxDir, s.netns = sb, id, dir, netns
	s.defaults = sizing.Size{VCPUs: cfg.Hypervisor.QEMU.DefaultVCPUs, MemoryMiB: cfg.Hypervisor.QEMU.DefaultMemory}
	s.mu.Unlock()
	go s.watchOOM(sb)
	go s.watchHealth(sb, healthPolicyOf(cfg))
	return sb, nil
}

// configPath returns the ConfigPath of containerd's runtime options, which
// arrive as runtimeoptions.v1.Options (ctr --runtime-config-path, or CRI's
// options table of the runtime). Other option types are not ours: ignored.
func configPath(opts *anypb.Any) (string, error) {
	if opts == nil || !strings.HasSuffix(opts.GetTypeUrl(), "runtimeoptions.v1.Options") {
		return "", nil
	}
	var o runtimeoptions.Options
	if err := proto.Unmarshal(opts.GetValue(), &o); err != nil {
		return "", fmt.Errorf("decode runtime options %s: %w: %w", opts.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
	}
	return o.ConfigPath, nil
}

// watchOOM's bounds against an agent that answers GetOOMEvent at once with
// nothing usable (a compromised guest, or a broken one): the shim must
// stay idle, not spin, and must not flood containerd with TaskOOM.
const (
	// oomBackoffMin and oomBackoffMax bound the wait after an answer with
	// nothing usable (an error, an unknown or exited container, a repeat
	// dropped); it doubles with each one and resets on a usable event.
	oomBackoffMin = 50 * time.Millisecond
	oomBackoffMax = 5 * time.Second
	// oomRepeatWindow: a container's next TaskOOM comes at least this
	// long after its last; events for it in between are dropped (a real
	// OOM loop still shows as one event a second).
	oomRepeatWindow = time.Second
)

// watchOOM turns the agent's OOM notifications into TaskOOM events, until
// the sandbox stops.
func (s *service) watchOOM(sb Sandbox) {
	ctx := s.ctx
	var backoff time.Duration
	last := map[string]time.Time{} // when each container's last TaskOOM went
	for {
		if backoff > 0 {
			select {
			case <-time.After(backoff):
			case <-sb.Done():
				return
			case <-ctx.Done():
				return
			}
		}
		usable, stop := s.nextOOM(ctx, sb, last)
		if stop {
			return
		}
		if usable {
			backoff = 0
		} else {
			backoff = min(max(2*backoff, oomBackoffMin), oomBackoffMax)
		}
	}
}

// nextOOM asks the agent for one OOM event and publishes it; usable is
// whether it did. stop: the sandbox or the shim is gone, or the agent
// has no OOM events.
func (s *service) nextOOM(ctx context.Context, sb Sandbox, last map[string]time.Time) (usable, stop bool) {
	ev, err := sb.Agent().GetOOMEvent(ctx, &agentpb.GetOOMEventRequest{})
	if err != nil {
		select {
		case <-sb.Done():
			return false, true
		case <-ctx.Done():
			return false, true
		default:
		}
		if errdefs.IsNotImplemented(errdefs.FromGRPC(err)) {
			log.G(ctx).WithError(err).Warn("agent reports no OOM events")
			return false, true
		}
		log.G(ctx).WithError(err).Debug("get OOM event")
		return false, false
	}
	c, err := s.getContainer(ev.ContainerId)
	if err != nil {
		log.G(ctx).WithField("id", ev.ContainerId).Debug("OOM event for an unknown container")
		return false, false
	}
	if c.init.hasExited() {
		return false, false // oomAtExit reported it
	}
	now := time.Now()
	if t, ok := last[c.id]; ok && now.Sub(t) < oomRepeatWindow {
		return false, false
	}
	if len(last) > 64 {
		// Containers come and go; forget the ones past the window.
		for id, t := range last {
			if now.Sub(t) >= oomRepeatWindow {
				delete(last, id)
			}
		}
	}
	last[c.id] = now
	c.markOOM()
	s.events.send(&eventstypes.TaskOOM{ContainerID: c.id})
	return true, false
}

// oomAtExit queues TaskOOM for an OOM kill the watcher has not reported
// yet: the agent's OOM notification and the process exit travel separately,
// and containerd must see TaskOOM before TaskExit.
func (s *service) oomAtExit(ctx context.Context, c *container, agent agentpb.AgentService) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := agent.StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: c.id})
	if err != nil {
		if !errors.Is(ctx.Err(), context.Canceled) {
			log.G(ctx).WithError(err).WithField("id", c.id).Debug("stats at exit")
		}
		return
	}
	if mem := st.GetMemory(); mem != nil && mem.OomKillEvents > 0 && !c.markOOM() {
		s.events.send(&eventstypes.TaskOOM{ContainerID: c.id})
	}
}
