package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/pkg/stdio"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/shim/rootfs"
	"golang.org/x/sys/unix"
)

// maxSpecSize bounds the config.json the shim reads from a bundle.
const maxSpecSize = 4 << 20

// fromAgent converts an error of an agent call back into errdefs terms.
func fromAgent(err error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.FromGRPC(err))
}

func readSpec(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read OCI spec: %w", err)
	}
	defer f.Close()
	var spec specs.Spec
	dec := json.NewDecoder(io.LimitReader(f, maxSpecSize))
	if err := dec.Decode(&spec); err != nil {
		return nil, fmt.Errorf("parse OCI spec %s: %w: %w", path, err, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// Create creates the container's rootfs in the sandbox (starting the
// sandbox for the first container) and its init process, not started.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	begin, hadSandbox := time.Now(), s.hasSandbox()
	resp, err := s.create(ctx, r)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Error("create task")
	} else {
		s.timedCreate(ctx, r.ID, time.Since(begin), !hadSandbox)
	}
	return resp, errdefs.ToGRPC(err)
}

func (s *service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if err := rootfs.ValidID(r.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("restore from checkpoint: %w", errdefs.ErrNotImplemented)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	hostHooks, state, err := takeHooks(r.ID, r.Bundle, spec)
	if err != nil {
		return nil, err
	}
	s.lifecycleMu.Lock()
	defer s.lifecycleMu.Unlock()
	if _, err := s.getContainer(r.ID); err == nil {
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	// A create that fails once its hooks began runs the poststop hooks,
	// as runc does, so that what createRuntime set up (CNI) is undone.
	hooksBegan, podNetns := false, ""
	defer func() {
		if retErr != nil && hooksBegan {
			runPoststop(ctx, hostHooks.Poststop, state, podNetns)
		}
	}()
	sb, err := s.ensureSandbox(ctx, r, spec, func(ctx context.Context, netns string) error {
		hooksBegan, podNetns = true, netns
		return runCreateHooks(ctx, hostHooks, state, netns)
	})
	if err != nil {
		return nil, err
	}
	layout, err := rootfs.NewLayout(sb.SharedDir(), sb.GuestSharedDir(), r.ID)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	layout.NS = sb.MountNS()
	c := &container{id: r.ID, bundle: r.Bundle, layout: layout, hooks: hostHooks, state: state, execs: make(map[string]*process)}
	c.podSandbox = spec.Annotations[annotationContainerType] == containerTypeSandbox
	// A container of a running pod that asks for more than its VM has
	// grows the VM first (CPU and memory hot-plug).
	if spec.Linux != nil && !c.podSandbox {
		c.demand = demandOf(spec.Linux.Resources)
		if err := s.growFor(ctx, sb, r.ID, c.demand); err != nil {
			return nil, err
		}
	}
	p := newProcess(r.ID, "", r.Terminal, stdio.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	c.init = p
	pid, err := s.createInSandbox(ctx, sb, c, r, spec)
	if err != nil {
		if rerr := rootfs.Remove(ctx, layout.NS, layout.HostDir); rerr != nil {
			log.G(ctx).WithError(rerr).Warn("clean up after failed create")
		}
		return nil, err
	}
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.events.send(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid:         pid,
	})
	// Watched from now on, not from Start: a task killed before it starts
	// (containerd's clients clean up a failed or abandoned task that way)
	// must exit too, with TaskExit after TaskCreate.
	go s.handleExit(c, p, sb.Agent())
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

// createInSandbox mounts the rootfs, creates the container in the agent and
// starts copying its stdio. On error, what it did in the agent is undone;
// the caller removes the mounts.
func (s *service) createInSandbox(ctx context.Context, sb Sandbox, c *container, r *taskAPI.CreateTaskRequest, spec *specs.Spec) (uint32, error) {
	mounts := make([]mount.Mount, 0, len(r.Rootfs))
	for _, m := range r.Rootfs {
		mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	if err := c.layout.MountRootfs(ctx, mounts, r.Bundle, spec); err != nil {
		return 0, err
	}
	if err := guestNamespaces(r.ID, spec, s.isGuestPid); err != nil {
		return 0, err
	}
	guestCgroupNamespace(spec)
	if err := c.layout.BindMounts(ctx, spec); err != nil {
		return 0, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := c.init.openIO(ctx); err != nil {
		return 0, err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		c.init.closeIO()
		return 0, fmt.Errorf("encode OCI spec: %w", err)
	}
	agent := sb.Agent()
	resp, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{
		ContainerId: r.ID,
		Spec:        data,
		Rootfs:      &agentpb.Rootfs{Path: c.layout.GuestRootfs()},
		Stdin:       r.Stdin != "",
	})
	if err != nil {
		c.init.closeIO()
		return 0, fromAgent(err, "create container %s in the sandbox", r.ID)
	}
	c.init.mu.Lock()
	c.init.pid = resp.Pid
	c.init.mu.Unlock()
	c.init.startCopies(s.ctx, sb.DialStdio)
	return resp.Pid, nil
}

// guestCgroupNamespace gives the container a cgroup namespace, as
// containerd does on cgroup v2 hosts: the guest is cgroup v2 whatever the
// host is, and with its own namespace the container sees its own cgroup
// (memory.max and the rest) at /sys/fs/cgroup. It also mounts that cgroup
// there, read-only, when the spec mounts /sys but nothing at
// /sys/fs/cgroup: CRI, nerdctl and Docker ask for that mount, but
// containerd's default spec (ctr, the Go client) does not, and runtimes
// that size themselves from memory.max and cpu.max (the JVM, Go, .NET)
// would see no limit. The guest's cgroups are the pod's alone, so the
// view shows nothing of the host.
func guestCgroupNamespace(spec *specs.Spec) {
	if spec.Linux == nil {
		return
	}
	hasNS := false
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.CgroupNamespace {
			hasNS = true
		}
	}
	if !hasNS {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	hasSys, hasCgroup := false, false
	for _, m := range spec.Mounts {
		switch path.Clean(m.Destination) {
		case "/sys":
			hasSys = true
		case "/sys/fs/cgroup":
			hasCgroup = true
		}
	}
	if hasSys && !hasCgroup {
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: "/sys/fs/cgroup",
			Type:        "cgroup",
			Source:      "cgroup",
			Options:     []string{"nosuid", "noexec", "nodev", "relatime", "ro"},
		})
	}
}

// Start starts a created init process or exec.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	begin := time.Now()
	resp, err := s.start(ctx, r)
	if err == nil {
		s.timedStart(ctx, r.ID, r.ExecID, time.Since(begin))
	}
	return resp, errdefs.ToGRPC(err)
}

func (s *service) start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return nil, err
	}
	agent := sb.Agent()
	if err := p.claimStart(); err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		// The init's exit is watched since Create; it waits for this Start
		// to end (endStart) before it publishes, so that TaskExit cannot
		// overtake TaskStart.
		if _, err := agent.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: r.ID}); err != nil {
			p.endStart(false)
			return nil, fromAgent(err, "start container %s", r.ID)
		}
		p.setStatus(task.Status_RUNNING)
		_, pid, _, _ := p.state()
		s.events.send(&eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
		p.endStart(true)
	} else {
		if err := s.startExec(ctx, agent, sb.DialStdio, p); err != nil {
			p.endStart(false)
			return nil, err
		}
		p.endStart(true)
		// An exec exists in the agent only from now: watch it now, after
		// TaskExecStarted; the agent keeps the exit status until asked.
		go s.handleExit(c, p, agent)
	}
	if r.ExecID == "" {
		if err := s.runPoststart(ctx, c); err != nil {
			// As runc: a container whose poststart hook failed goes.
			if _, kerr := agent.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: r.ID, Signal: uint32(unix.SIGKILL), All: true}); kerr != nil {
				log.G(ctx).WithError(kerr).WithField("id", r.ID).Warn("kill container after failed poststart hook")
			}
			// runc returns once the container is gone, so that the
			// client's Delete that follows finds it stopped.
			wctx, cancel := context.WithTimeout(ctx, poststartKillWait)
			defer cancel()
			if werr := p.wait(wctx); werr != nil {
				log.G(ctx).WithError(werr).WithField("id", r.ID).Warn("wait for container after failed poststart hook")
			}
			return nil, err
		}
	}
	_, pid, _, _ := p.state()
	return &taskAPI.StartResponse{Pid: pid}, nil
}

func (s *service) startExec(ctx context.Context, agent agentpb.AgentService, dial dialFunc, p *process) error {
	if err := p.openIO(ctx); err != nil {
		return err
	}
	resp, err := agent.ExecProcess(ctx, &agentpb.ExecProcessRequest{
		ContainerId: p.containerID,
		ExecId:      p.execID,
		Process:     p.spec,
		Stdin:       p.stdio.Stdin != "",
	})
	if err != nil {
		p.closeIO()
		return fromAgent(err, "exec %s in container %s", p.execID, p.containerID)
	}
	p.mu.Lock()
	p.pid = resp.Pid
	p.status = task.Status_RUNNING
	p.mu.Unlock()
	p.startCopies(s.ctx, dial)
	s.events.send(&eventstypes.TaskExecStarted{ContainerID: p.containerID, ExecID: p.execID, Pid: resp.Pid})
	return nil
}

// handleExit waits for p's exit and publishes it once its output is
// drained; an init process also waits for its execs' exits, and for a
// pending OOM, to keep containerd's event order. The exit of an init
// killed before Start is published the same way, without a TaskStart.
func (s *service) handleExit(c *container, p *process, agent agentpb.AgentService) {
	ctx := s.ctx
	status, at := p.waitAgent(ctx, agent)
	p.settleStart(ctx)
	p.waitOutput(ctx)
	if p.execID == "" {
		c.waitExecs(ctx, outputGrace)
		s.oomAtExit(ctx, c, agent)
	}
	s.publishExit(c, p, status, at)
}

// publishExit records p's exit and queues its TaskExit, once.
func (s *service) publishExit(c *container, p *process, status uint32, at time.Time) {
	p.onceExit(func() {
		p.recordExit(status, at)
		_, pid, status, at := p.state()
		id := p.execID
		if id == "" {
			id = c.id
		}
		s.events.send(&eventstypes.TaskExit{
			ContainerID: c.id,
			ID:          id,
			Pid:         pid,
			ExitStatus:  status,
			ExitedAt:    protobuf.ToTimestamp(at),
		})
		p.markExited()
	})
}

// Delete removes an exited process; for the init process also the
// container, its mounts and its state in the agent.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.delete(ctx, r)
	return resp, errdefs.ToGRPC(err)
}

func (s *service) delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, _, _, _ := p.state()
	if st == task.Status_RUNNING || st == task.Status_PAUSED {
		return nil, fmt.Errorf("cannot delete %s process %q of container %s: %w", st, r.ExecID, r.ID, errdefs.ErrFailedPrecondition)
	}
	if r.ExecID != "" {
		if st == task.Status_STOPPED {
			_ = p.wait(ctx)
		}
		c.removeExec(r.ExecID)
		p.closeIO()
		_, pid, status, at := p.state()
		return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}
	s.lifecycleMu.Lock()
	defer s.lifecycleMu.Unlock()
	sb, err := s.currentSandbox()
	if err != nil {
		return nil, err
	}
	if err := s.removeContainer(ctx, sb, c, st); err != nil {
		return nil, err
	}
	_, pid, status, at := p.state()
	s.events.send(&eventstypes.TaskDelete{ContainerID: c.id, ID: c.id, Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)})
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// createdKillWait bounds how long Delete of a created container waits
// for the exit of the init it killed before it reports the exit itself.
const createdKillWait = 10 * time.Second

// removeContainer undoes Create. A container never started is killed
// first, and its exit published, since a client may wait on it.
func (s *service) removeContainer(ctx context.Context, sb Sandbox, c *container, st task.Status) error {
	agent := sb.Agent()
	if st == task.Status_CREATED {
		if _, err := agent.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: c.id, Signal: uint32(unix.SIGKILL), All: true}); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Debug("kill created container")
		}
		// The exit watcher publishes the exit; if the agent cannot
		// tell, the kill's status stands.
		wctx, cancel := context.WithTimeout(ctx, createdKillWait)
		if c.init.wait(wctx) != nil && ctx.Err() == nil {
			log.G(ctx).WithField("id", c.id).Warn("no exit of the killed created container; reporting SIGKILL")
			s.publishExit(c, c.init, 128+uint32(unix.SIGKILL), time.Now())
		}
		cancel()
	} else {
		_ = c.init.wait(ctx)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.ContainerRequest{ContainerId: c.id}); err != nil {
		// A sandbox that is gone took the container with it.
		if !sandboxGone(ctx, sb, err) && !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
			return fromAgent(err, "remove container %s from the sandbox", c.id)
		}
	}
	c.init.closeIO()
	c.mu.Lock()
	for _, e := range c.execs {
		e.closeIO()
	}
	c.mu.Unlock()
	if err := rootfs.Remove(ctx, c.layout.NS, c.layout.HostDir); err != nil {
		return fmt.Errorf("remove rootfs of container %s: %w", c.id, err)
	}
	s.runPoststop(ctx, c)
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	return nil
}

// Exec registers an exec process; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	return empty, errdefs.ToGRPC(s.exec(ctx, r))
}

func (s *service) exec(ctx context.Context, r *taskAPI.ExecProcessRequest) error {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return err
	}
	if c.init.hasExited() {
		return fmt.Errorf("container %s is not running: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if r.ExecID == "" || r.Spec == nil {
		return fmt.Errorf("exec in container %s: exec id and process spec are required: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	var proc specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &proc); err != nil {
		return fmt.Errorf("exec %s in container %s: decode process spec: %w: %w", r.ExecID, r.ID, err, errdefs.ErrInvalidArgument)
	}
	p := newProcess(r.ID, r.ExecID, r.Terminal, stdio.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	p.spec = r.Spec.GetValue()
	if err := c.addExec(p); err != nil {
		return err
	}
	s.events.send(&eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return nil
}

// Wait blocks until the process exited.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if err := p.wait(ctx); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	_, _, status, at := p.state()
	return &taskAPI.WaitResponse{ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Kill signals a process, or every process of the container.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	return empty, errdefs.ToGRPC(s.kill(ctx, r))
}

func (s *service) kill(ctx context.Context, r *taskAPI.KillRequest) error {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return err
	}
	st, _, _, _ := p.state()
	if st == task.Status_STOPPED && !r.All {
		return errProcessFinished(r.ID)
	}
	if st == task.Status_CREATED && r.ExecID != "" {
		return fmt.Errorf("exec %s of container %s is not started: %w", r.ExecID, r.ID, errdefs.ErrFailedPrecondition)
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return err
	}
	_, err = sb.Agent().SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: r.ID, ExecId: r.ExecID, Signal: r.Signal, All: r.All})
	if err != nil {
		if p.hasExited() || exitedInGuest(err) {
			return errProcessFinished(r.ID)
		}
		return fromAgent(err, "signal %d to process %q of container %s", r.Signal, r.ExecID, r.ID)
	}
	return nil
}

// exitedInGuest reports whether the agent refused a signal because the
// process is gone in the guest while its exit is still on its way to the
// shim (output draining, exec exits first). As runc's shim does for "no
// such process", that is "process already finished": containerd then waits
// for TaskExit instead of failing the stop.
func exitedInGuest(err error) bool {
	err = errdefs.FromGRPC(err)
	return errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err)
}

// State reports a process's status.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	st, pid, status, at := p.state()
	id := r.ExecID
	if id == "" {
		id = c.id
	}
	return &taskAPI.StateResponse{
		ID:         id,
		Bundle:     c.bundle,
		Pid:        pid,
		Status:     st,
		Stdin:      p.stdio.Stdin,
		Stdout:     p.stdio.Stdout,
		Stderr:     p.stdio.Stderr,
		Terminal:   p.terminal,
		ExitStatus: status,
		ExitedAt:   protobuf.ToTimestamp(at),
		ExecID:     r.ExecID,
	}, nil
}
