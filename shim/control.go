package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	agentpb "github.com/vmpod/vmpod/proto"
)

// maxProcesses bounds the process list accepted from the guest.
const maxProcesses = 1 << 16

// maxIODevices bounds the devices accepted in the guest's io stats.
const maxIODevices = 256

// Pause freezes the container.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	return empty, errdefs.ToGRPC(s.pauseResume(ctx, r.ID, true))
}

// Resume thaws the container.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	return empty, errdefs.ToGRPC(s.pauseResume(ctx, r.ID, false))
}

func (s *service) pauseResume(ctx context.Context, id string, pause bool) error {
	c, err := s.getContainer(id)
	if err != nil {
		return err
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return err
	}
	st, _, _, _ := c.init.state()
	if pause && st != task.Status_RUNNING {
		return fmt.Errorf("cannot pause %s container %s: %w", st, id, errdefs.ErrFailedPrecondition)
	}
	if !pause && st != task.Status_PAUSED {
		return fmt.Errorf("cannot resume %s container %s: %w", st, id, errdefs.ErrFailedPrecondition)
	}
	req := &agentpb.ContainerRequest{ContainerId: id}
	if pause {
		if _, err := sb.Agent().PauseContainer(ctx, req); err != nil {
			return fromAgent(err, "pause container %s", id)
		}
		c.init.setStatus(task.Status_PAUSED)
		s.events.send(&eventstypes.TaskPaused{ContainerID: id})
		return nil
	}
	if _, err := sb.Agent().ResumeContainer(ctx, req); err != nil {
		return fromAgent(err, "resume container %s", id)
	}
	c.init.setStatus(task.Status_RUNNING)
	s.events.send(&eventstypes.TaskResumed{ContainerID: id})
	return nil
}

// Pids lists the container's processes, as pids in the guest.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	if _, err := s.getContainer(r.ID); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	resp, err := sb.Agent().ListProcesses(ctx, &agentpb.ContainerRequest{ContainerId: r.ID})
	if err != nil {
		return nil, errdefs.ToGRPC(fromAgent(err, "list processes of container %s", r.ID))
	}
	if len(resp.Processes) > maxProcesses {
		return nil, errdefs.ToGRPC(fmt.Errorf("agent listed %d processes for container %s: %w", len(resp.Processes), r.ID, errdefs.ErrUnknown))
	}
	out := &taskAPI.PidsResponse{}
	for _, p := range resp.Processes {
		out.Processes = append(out.Processes, &task.ProcessInfo{Pid: p.Pid})
	}
	return out, nil
}

// ResizePty resizes a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	if _, _, err := s.getProcess(r.ID, r.ExecID); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	_, err = sb.Agent().ResizeTty(ctx, &agentpb.ResizeTtyRequest{ContainerId: r.ID, ExecId: r.ExecID, Rows: r.Height, Columns: r.Width})
	if err != nil {
		return nil, errdefs.ToGRPC(fromAgent(err, "resize terminal of process %q of container %s", r.ExecID, r.ID))
	}
	return empty, nil
}

// CloseIO closes a process's stdin once the client's data has gone through.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if r.Stdin {
		p.closeStdin(ctx)
	}
	return empty, nil
}

// Update changes the container's resources in the guest.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	return empty, errdefs.ToGRPC(s.update(ctx, r))
}

func (s *service) update(ctx context.Context, r *taskAPI.UpdateTaskRequest) error {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return err
	}
	if r.Resources == nil {
		return fmt.Errorf("update container %s: no resources: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	// containerd sends a specs.LinuxResources as JSON in the Any.
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
		return fmt.Errorf("update container %s: decode resources of type %s: %w: %w", r.ID, r.Resources.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
	}
	// CRI sends the container's whole resources, its device rules
	// included, unchanged: like runc update, leave the device cgroup as
	// it was created (the agent refuses device updates).
	res.Devices = nil
	data, err := json.Marshal(&res)
	if err != nil {
		return err
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return err
	}
	// More CPU or memory than the VM has: grow it first, so that the
	// guest can honour the new limits. A lower update shrinks nothing.
	s.mu.Lock()
	demand := mergeDemand(c.demand, &res)
	s.mu.Unlock()
	if !c.podSandbox {
		if err := s.growFor(ctx, sb, r.ID, demand); err != nil {
			return err
		}
	}
	if _, err := sb.Agent().UpdateContainer(ctx, &agentpb.UpdateContainerRequest{ContainerId: r.ID, Resources: data}); err != nil {
		return fromAgent(err, "update resources of container %s", r.ID)
	}
	s.mu.Lock()
	c.demand = demand
	s.mu.Unlock()
	return nil
}

// Stats returns the container's cgroup v2 metrics from the guest, in the
// type `ctr task metrics` and the CRI plugin decode.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	if _, err := s.getContainer(r.ID); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	sb, err := s.currentSandbox()
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	st, err := sb.Agent().StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: r.ID})
	if err != nil {
		return nil, errdefs.ToGRPC(fromAgent(err, "stats of container %s", r.ID))
	}
	data, err := protobuf.MarshalAnyToProto(metricsFromAgent(st))
	if err != nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("encode metrics of container %s: %w", r.ID, err))
	}
	return &taskAPI.StatsResponse{Stats: data}, nil
}

func metricsFromAgent(st *agentpb.StatsContainerResponse) *v2stats.Metrics {
	m := &v2stats.Metrics{}
	if c := st.GetCpu(); c != nil {
		m.CPU = &v2stats.CPUStat{
			UsageUsec:     c.UsageUsec,
			UserUsec:      c.UserUsec,
			SystemUsec:    c.SystemUsec,
			NrPeriods:     c.NrPeriods,
			NrThrottled:   c.NrThrottled,
			ThrottledUsec: c.ThrottledUsec,
		}
	}
	if mem := st.GetMemory(); mem != nil {
		m.Memory = &v2stats.MemoryStat{
			Usage:      mem.UsageBytes,
			UsageLimit: mem.LimitBytes,
			Anon:       mem.AnonBytes,
			File:       mem.FileBytes,
			SwapUsage:  mem.SwapUsageBytes,
		}
		m.MemoryEvents = &v2stats.MemoryEvents{Oom: mem.OomEvents, OomKill: mem.OomKillEvents}
	}
	if p := st.GetPids(); p != nil {
		m.Pids = &v2stats.PidsStat{Current: p.Current, Limit: p.Limit}
	}
	if io := st.GetIo(); io != nil {
		m.Io = ioFromAgent(io)
	}
	return m
}

// ioFromAgent folds the agent's per-operation entries into one entry per
// device, as cgroup v2's io.stat has them.
func ioFromAgent(io *agentpb.IOStats) *v2stats.IOStat {
	out := &v2stats.IOStat{}
	byDev := map[[2]uint64]*v2stats.IOEntry{}
	entry := func(major, minor uint64) *v2stats.IOEntry {
		k := [2]uint64{major, minor}
		if e, ok := byDev[k]; ok {
			return e
		}
		if len(byDev) >= maxIODevices {
			return &v2stats.IOEntry{}
		}
		e := &v2stats.IOEntry{Major: major, Minor: minor}
		byDev[k] = e
		out.Usage = append(out.Usage, e)
		return e
	}
	for _, e := range io.ServiceBytes {
		switch d := entry(e.Major, e.Minor); strings.ToLower(e.Op) {
		case "read":
			d.Rbytes = e.Value
		case "write":
			d.Wbytes = e.Value
		}
	}
	for _, e := range io.Serviced {
		switch d := entry(e.Major, e.Minor); strings.ToLower(e.Op) {
		case "read":
			d.Rios = e.Value
		case "write":
			d.Wios = e.Value
		}
	}
	return out
}

// Checkpoint is not supported: a VM's containers cannot be checkpointed
// with CRIU from the host.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, errdefs.ToGRPC(fmt.Errorf("checkpoint container %s: %w", r.ID, errdefs.ErrNotImplemented))
}
