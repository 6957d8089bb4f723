package agent

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

// This file holds the RPCs on running processes and containers: signals,
// stdio, observation and control.

// SignalProcess signals one process, or every process of the container.
func (s *Server) SignalProcess(ctx context.Context, req *agentpb.SignalProcessRequest) (*agentpb.Empty, error) {
	sig := req.GetSignal()
	if sig == 0 || sig > 64 {
		return nil, fmt.Errorf("signal %d: must be in 1..64: %w", sig, errdefs.ErrInvalidArgument)
	}
	c, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if req.GetAll() {
		return &agentpb.Empty{}, c.SignalAll(unix.Signal(sig))
	}
	return &agentpb.Empty{}, p.Signal(c, unix.Signal(sig))
}

// ResizeTty sets the terminal size of a process started with a terminal.
func (s *Server) ResizeTty(ctx context.Context, req *agentpb.ResizeTtyRequest) (*agentpb.Empty, error) {
	rows, cols := req.GetRows(), req.GetColumns()
	if rows > 0xffff || cols > 0xffff {
		return nil, fmt.Errorf("terminal size %dx%d: too large: %w", rows, cols, errdefs.ErrInvalidArgument)
	}
	_, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	return &agentpb.Empty{}, p.Resize(uint16(rows), uint16(cols))
}

// ListProcesses lists the pids in the container's cgroup, naming the exec
// each belongs to where known.
func (s *Server) ListProcesses(ctx context.Context, req *agentpb.ContainerRequest) (*agentpb.ListProcessesResponse, error) {
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return nil, fmt.Errorf("processes of container %s: %w", c.id, err)
	}
	execOf := map[int]string{}
	for _, p := range c.processes() {
		if !p.Exited() {
			execOf[p.Pid()] = p.execID
		}
	}
	resp := &agentpb.ListProcessesResponse{}
	for _, pid := range pids {
		resp.Processes = append(resp.Processes, &agentpb.ProcessInfo{Pid: uint32(pid), ExecId: execOf[pid]})
	}
	return resp, nil
}

// StatsContainer reports the container's cgroup statistics.
func (s *Server) StatsContainer(ctx context.Context, req *agentpb.ContainerRequest) (*agentpb.StatsContainerResponse, error) {
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	st, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.id, err)
	}
	memPath := c.cgroupPaths["memory"] // v1
	if memPath == "" {
		memPath = c.cgroupPaths[""] // v2
	}
	return statsResponse(st.CgroupStats, memPath), nil
}

// GetOOMEvent waits for a container of the sandbox to hit its memory limit.
func (s *Server) GetOOMEvent(ctx context.Context, req *agentpb.GetOOMEventRequest) (*agentpb.OOMEvent, error) {
	select {
	case id := <-s.oom:
		return &agentpb.OOMEvent{ContainerId: id}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// PauseContainer freezes every process of the container.
func (s *Server) PauseContainer(ctx context.Context, req *agentpb.ContainerRequest) (*agentpb.Empty, error) {
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := c.lc.Pause(); err != nil {
		return nil, lcError("pause", c.id, err)
	}
	return &agentpb.Empty{}, nil
}

// ResumeContainer thaws a paused container.
func (s *Server) ResumeContainer(ctx context.Context, req *agentpb.ContainerRequest) (*agentpb.Empty, error) {
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := c.lc.Resume(); err != nil {
		return nil, lcError("resume", c.id, err)
	}
	return &agentpb.Empty{}, nil
}

// UpdateContainer changes the container's cgroup resources.
func (s *Server) UpdateContainer(ctx context.Context, req *agentpb.UpdateContainerRequest) (*agentpb.Empty, error) {
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	r, err := DecodeResources(req.GetResources())
	if err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	cfg := c.lc.Config()
	cg := *cfg.Cgroups
	res := *cg.Resources
	applyResources(&res, r)
	cg.Resources = &res
	cfg.Cgroups = &cg
	if err := c.lc.Set(cfg); err != nil {
		return nil, lcError("update", c.id, err)
	}
	return &agentpb.Empty{}, nil
}

// lcError wraps a libcontainer error, mapping its state errors to
// FailedPrecondition.
func lcError(op, id string, err error) error {
	if errNotRunning(err) {
		return fmt.Errorf("%s container %s: %v: %w", op, id, err, errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("%s container %s: %w", op, id, err)
}
