package shim

import (
	"context"
	"time"

	"github.com/containerd/log"
)

// The shim's timing lines: at info level, tagged with the sandbox, so that
// an operator (and `make bench`, bench/phases.go) reads how long a
// sandbox's steps took without a debug log. `vm started`, with the boot's
// phases, comes from package vm.

// hasSandbox says whether the shim runs its sandbox yet.
func (s *service) hasSandbox() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sandbox != nil
}

// timedCreate logs `container created` and records it in the metrics.
// For the container whose Create started the sandbox, the duration holds
// the VM's start, which the metrics record as phases of their own.
func (s *service) timedCreate(ctx context.Context, id string, d time.Duration, startedSandbox bool) {
	s.mu.Lock()
	sb, sbID := s.sandbox, s.sandboxID
	s.mu.Unlock()
	log.G(ctx).WithFields(log.Fields{"sandbox": sbID, "id": id, "duration": d, "started_sandbox": startedSandbox}).Info("container created")
	if o, ok := sb.(containerCreateObserver); ok {
		o.observeContainerCreate(d, startedSandbox)
	}
}

// timedStart logs `process started`.
func (s *service) timedStart(ctx context.Context, id, execID string, d time.Duration) {
	s.mu.Lock()
	sbID := s.sandboxID
	s.mu.Unlock()
	f := log.Fields{"sandbox": sbID, "id": id, "duration": d}
	if execID != "" {
		f["exec_id"] = execID
	}
	log.G(ctx).WithFields(f).Info("process started")
}

// timedStop logs `sandbox stopped`.
func timedStop(ctx context.Context, id string, d time.Duration, err error) {
	e := log.G(ctx).WithFields(log.Fields{"sandbox": id, "duration": d})
	if err != nil {
		e = e.WithError(err)
	}
	e.Info("sandbox stopped")
}
