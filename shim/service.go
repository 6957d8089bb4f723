package shim

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/pkg/shutdown"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/log"
	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/shim/rootfs"
	"github.com/vmpod/vmpod/sizing"
)

var (
	_     taskAPI.TaskService = (*service)(nil)
	empty                     = &ptypes.Empty{}
)

// stopTimeout bounds the teardown of the sandbox at shutdown.
const stopTimeout = 30 * time.Second

// ServiceOptions configure a task service.
type ServiceOptions struct {
	// NewSandbox starts the sandbox for the first container.
	NewSandbox SandboxFactory
	// LoadConfig loads the configuration; config.Load when nil.
	LoadConfig func(configPath string) (*config.Config, error)
}

// service implements containerd's Task API for the containers of one
// sandbox.
type service struct {
	// ctx lives as long as the shim; the per-process goroutines use it.
	ctx    context.Context
	opts   ServiceOptions
	events *eventQueue
	sd     shutdown.Service

	// lifecycleMu serialises Create and Delete, which may start the sandbox
	// (seconds) without blocking the other calls behind mu.
	lifecycleMu sync.Mutex

	mu         sync.Mutex
	sandbox    Sandbox // guarded by mu; nil until the first Create
	sandboxID  string  // guarded by mu; the pod's id (CRI), else the first container's
	sandboxDir string  // guarded by mu
	// netns is the pod's network namespace on the host ("" for none),
	// where the host hooks run. guarded by mu
	netns      string
	containers map[string]*container // guarded by mu
	// defaults is the configured VM size before any container (the
	// guest's own share), the base of the pod's demand. guarded by mu
	defaults sizing.Size
	// resizeMu serialises growing the VM (growFor).
	resizeMu sync.Mutex
}

// NewService returns a task service that publishes through publisher and
// tears the sandbox down when sd shuts the shim down.
func NewService(ctx context.Context, publisher events.Publisher, sd shutdown.Service, opts ServiceOptions) taskAPI.TaskService {
	if opts.LoadConfig == nil {
		opts.LoadConfig = config.Load
	}
	s := &service{
		ctx:        ctx,
		opts:       opts,
		events:     newEventQueue(),
		sd:         sd,
		containers: make(map[string]*container),
	}
	go s.events.forward(ctx, publisher)
	sd.RegisterCallback(s.teardown)
	return s
}

// teardown runs when the shim shuts down: it stops the sandbox, removes its
// state, and flushes the events still queued.
func (s *service) teardown(context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), stopTimeout)
	defer cancel()
	err := s.stopSandbox(ctx)
	s.events.close()
	select {
	case <-s.events.done:
	case <-ctx.Done():
		log.G(ctx).Warn("events still queued at shutdown")
	}
	return err
}

// stopSandbox stops the sandbox and removes its state directory; a second
// call does nothing.
func (s *service) stopSandbox(ctx context.Context) error {
	s.mu.Lock()
	sb, dir, id := s.sandbox, s.sandboxDir, s.sandboxID
	s.sandbox, s.sandboxDir = nil, ""
	s.mu.Unlock()
	var err error
	if sb != nil {
		begin := time.Now()
		if serr := sb.Stop(ctx); serr != nil {
			err = fmt.Errorf("stop sandbox: %w", serr)
		}
		timedStop(ctx, id, time.Since(begin), err)
	}
	if dir != "" {
		if rerr := rootfs.Remove(ctx, nil, dir); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// getContainer returns container id.
func (s *service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// getProcess returns the init process of container id (execID "") or one of
// its execs.
func (s *service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// isGuestPid reports whether pid is the guest pid of one of the shim's
// containers' init processes.
func (s *service) isGuestPid(pid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.containers {
		if _, p, _, _ := c.init.state(); p == pid {
			return true
		}
	}
	return false
}

func (s *service) currentSandbox() (Sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandbox == nil {
		return nil, fmt.Errorf("no sandbox yet: %w", errdefs.ErrFailedPrecondition)
	}
	return s.sandbox, nil
}

// Connect returns the shim's pid and the task's.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if _, p, err := s.getProcess(r.ID, ""); err == nil {
		_, pid, _, _ := p.state()
		resp.TaskPid = pid
	}
	return resp, nil
}

// Shutdown ends the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.lifecycleMu.Lock()
	defer s.lifecycleMu.Unlock()
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return empty, nil
	}
	// Stop the VM before answering: once this call returns, containerd
	// closes the connection and runs `shim delete`, which would otherwise
	// race the teardown for the same processes, mounts and taps.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := s.stopSandbox(sctx); err != nil {
		log.G(ctx).WithError(err).Warn("tear down sandbox at shutdown")
	}
	s.sd.Shutdown()
	return empty, nil
}
