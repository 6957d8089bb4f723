package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	ctrerrdefs "github.com/containerd/containerd/errdefs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	// Device rules of container cgroups need the devices controller code.
	_ "github.com/opencontainers/cgroups/devices"

	agentpb "github.com/vmpod/vmpod/proto"
)

// Config chooses how a Server behaves.
type Config struct {
	// StateDir is libcontainer's state root.
	StateDir string
	// Guest lets the agent change the machine it runs on (hostname,
	// /etc/resolv.conf). It is set when the agent is the guest's PID 1
	// and unset in host tests, which must not touch the host.
	Guest bool
	// NoPivotRoot makes containers enter their root with MS_MOVE and
	// chroot: pivot_root fails when the agent's root is the initramfs.
	NoPivotRoot bool
	// MaxStreams bounds the stdio stream connections held at once
	// (ServeStdio); DefaultMaxStreams when zero.
	MaxStreams int
	// DebugConsole allows DebugExec: commands in the guest outside any
	// container. Off unless [runtime] debug_console = true.
	DebugConsole bool
}

// removeTimeout bounds how long RemoveContainer waits for killed processes.
const removeTimeout = 30 * time.Second

// oomQueue bounds the OOM events not yet fetched by GetOOMEvent.
const oomQueue = 128

// Server implements agentpb.AgentService.
type Server struct {
	cfg    Config
	reaper *Reaper
	oom    chan string // ids of containers that hit their memory limit
	net    *network

	mu sync.Mutex // guards containers
	// containers maps an id to its container; a nil value reserves the id
	// while the container is being created or removed.
	containers map[string]*Container

	sandboxMu sync.Mutex // guards sandbox and netSysctls, serialises sandbox changes
	sandbox   *sandbox   // nil until CreateSandbox
	// netSysctls are the net.* sysctls set in the pod's network namespace,
	// by path below /proc/sys.
	netSysctls map[string]podSysctl
}

var _ agentpb.AgentService = (*Server)(nil)

// New returns a server; Serve runs it.
func New(cfg Config) (*Server, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: no state directory")
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	return &Server{
		cfg:        cfg,
		reaper:     NewReaper(),
		oom:        make(chan string, oomQueue),
		net:        newNetwork(nil),
		containers: map[string]*Container{},
	}, nil
}

// Serve answers requests on l until ctx ends or l fails. It also runs the
// reaper, which makes the agent a child subreaper: libcontainer needs that
// to wait for container processes.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(unaryInterceptor))
	if err != nil {
		return err
	}
	agentpb.RegisterAgentService(srv, s)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reap, err := s.reaper.Run(ctx)
	if err != nil {
		return err
	}
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		reap()
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	err = srv.Serve(ctx, l)
	cancel()
	<-reaped
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// unaryInterceptor converts errors to ttrpc status codes, once, and turns
// a panic into an Internal error instead of killing the guest's PID 1.
func unaryInterceptor(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			log.G(ctx).WithField("method", info.FullMethod).Errorf("panic: %v", r)
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error: %v", info.FullMethod, r)
		}
	}()
	resp, err = method(ctx, unmarshal)
	if err != nil {
		e := log.G(ctx).WithError(err).WithField("method", info.FullMethod)
		if operatorVisible(info.FullMethod, err) {
			// At warning, the shim logs it with debug = false: a container
			// that fails to start is explained where operators look.
			e.Warn("request failed")
		} else {
			e.Debug("request failed")
		}
	}
	return resp, ctrerrdefs.ToGRPC(err)
}

// operatorVisible says whether a failed request explains a failure an
// operator sees (a container or process that did not start). Lookups of
// what is already gone and the shim's probes stay at debug.
func operatorVisible(method string, err error) bool {
	switch method[strings.LastIndexByte(method, '/')+1:] {
	case "CreateSandbox", "CreateContainer", "StartContainer", "ExecProcess":
	default:
		return false
	}
	return !errdefs.IsNotFound(err) && !errdefs.IsAlreadyExists(err) && !errdefs.IsCanceled(err)
}

// container finds a container by id.
func (s *Server) container(id string) (*Container, error) {
	if err := validateID("container id", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[id]
	if c == nil {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// process finds a container and one of its processes.
func (s *Server) process(containerID, execID string) (*Container, *Process, error) {
	if err := validateExecID(execID); err != nil {
		return nil, nil, err
	}
	c, err := s.container(containerID)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.Process(execID)
	return c, p, err
}

// reserve claims id for a container being created.
func (s *Server) reserve(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[id]; ok {
		return fmt.Errorf("container %s: %w", id, errdefs.ErrAlreadyExists)
	}
	s.containers[id] = nil
	return nil
}

// CreateContainer creates a container and its init process, which waits
// for StartContainer.
func (s *Server) CreateContainer(ctx context.Context, req *agentpb.CreateContainerRequest) (*agentpb.CreateContainerResponse, error) {
	id := req.GetContainerId()
	if err := validateID("container id", id); err != nil {
		return nil, err
	}
	if req.GetRootfs() == nil {
		return nil, fmt.Errorf("container %s: no rootfs: %w", id, errdefs.ErrInvalidArgument)
	}
	cfg, spec, err := ContainerConfig(id, req.GetSpec(), req.GetRootfs().GetPath(), s.cfg.NoPivotRoot)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	netSysctls := podSysctls(cfg)
	if err := checkSeccompSupport(cfg); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	mounts, err := ParseMounts(req.GetRootfs().GetMounts())
	if err != nil {
		return nil, fmt.Errorf("rootfs of container %s: %w", id, err)
	}
	if err := s.reserve(id); err != nil {
		return nil, err
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("id", id))
	if err := s.applyPodSysctls(ctx, id, netSysctls); err != nil {
		s.mu.Lock()
		delete(s.containers, id)
		s.mu.Unlock()
		return nil, err
	}
	c, err := createContainer(ctx, containerParams{
		id:           id,
		root:         s.cfg.StateDir,
		config:       cfg,
		process:      spec.Process,
		rootfsMounts: mounts,
		stdin:        req.GetStdin(),
		reaper:       s.reaper,
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.containers, id)
		return nil, err
	}
	c.watchOOM(context.WithoutCancel(ctx), s.oom)
	s.containers[id] = c
	return &agentpb.CreateContainerResponse{Pid: uint32(c.init.Pid())}, nil
}

// StartContainer lets the init process run its program.
func (s *Server) StartContainer(ctx context.Context, req *agentpb.ContainerRequest) (*agentpb.Empty, error) {
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return &agentpb.Empty{}, c.init.Start(c)
}

// RemoveContainer kills what remains of a container and removes it. Its
// processes, and their unread output, are gone afterwards.
func (s *Server) RemoveContainer(ctx context.Context, req *agentpb.ContainerRequest) (*agentpb.Empty, error) {
	id := req.GetContainerId()
	c, err := s.container(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.containers[id] != c { // raced with another RemoveContainer
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	s.containers[id] = nil
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, removeTimeout)
	defer cancel()
	err = c.Remove(log.WithLogger(ctx, log.G(ctx).WithField("id", id)))
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.containers[id] = c // still there: the host may retry
		return nil, err
	}
	delete(s.containers, id)
	return &agentpb.Empty{}, nil
}

// ExecProcess starts a new process in a container.
func (s *Server) ExecProcess(ctx context.Context, req *agentpb.ExecProcessRequest) (*agentpb.ExecProcessResponse, error) {
	if err := validateID("exec id", req.GetExecId()); err != nil {
		return nil, err
	}
	c, err := s.container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	spec, err := DecodeProcess(req.GetProcess())
	if err != nil {
		return nil, fmt.Errorf("exec %s of container %s: %w", req.GetExecId(), c.id, err)
	}
	p, err := c.Exec(ctx, req.GetExecId(), spec, req.GetStdin())
	if err != nil {
		return nil, err
	}
	return &agentpb.ExecProcessResponse{Pid: uint32(p.Pid())}, nil
}

// WaitProcess blocks until the process exited and returns its status; it
// may be called again after the exit.
func (s *Server) WaitProcess(ctx context.Context, req *agentpb.ProcessRequest) (*agentpb.WaitProcessResponse, error) {
	_, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}
