package shim

import (
	"context"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/vmpod/vmpod/metrics"
	"github.com/vmpod/vmpod/vm"
	"github.com/vmpod/vmpod/vsock/device"
)

// Sockets in the sandbox's state directory (0700), each 0600.
const (
	// MetricsSocketName serves the sandbox's Prometheus metrics
	// ([runtime] enable_metrics).
	MetricsSocketName = metrics.SocketName
	// PprofSocketName serves the shim's net/http/pprof ([runtime]
	// enable_pprof).
	PprofSocketName = "pprof.sock"
)

// CRI's annotations on the sandbox container naming the pod.
const (
	annotationPodName      = "io.kubernetes.cri.sandbox-name"
	annotationPodNamespace = "io.kubernetes.cri.sandbox-namespace"
)

// observability is a VM sandbox's metrics and profiling sockets.
type observability struct {
	m     *metrics.Sandbox // nil when metrics are off
	stops []func()
}

// newObservability prepares the sandbox's metrics before its VM starts, so
// that the agent client is timed from its first call.
func newObservability(req SandboxRequest) *observability {
	o := &observability{}
	if req.Config.Runtime.EnableMetrics {
		o.m = metrics.New(req.ID, os.Getpid(), 0)
	}
	return o
}

// interceptor times the agent's calls; nil without metrics.
func (o *observability) interceptor() ttrpc.UnaryClientInterceptor {
	if o.m == nil {
		return nil
	}
	return o.m.Interceptor()
}

// start records the VM's boot and serves the sockets. A socket that cannot
// be served is logged, not fatal: the pod runs without it.
func (o *observability) start(ctx context.Context, req SandboxRequest, v *vm.VM) {
	if o.m != nil {
		p := v.Phases()
		o.m.ObservePhase(metrics.PhaseVMMStart, p.VMMStart)
		o.m.ObservePhase(metrics.PhaseGuestBoot, p.GuestBoot)
		o.m.ObservePhase(metrics.PhaseAgentReady, p.AgentReady)
		src := metrics.Source{
			QEMUPid:      v.Pid,
			VirtiofsdPid: v.VirtiofsdPid,
			Size: func() (int, uint64) {
				cur, _ := v.Resources()
				return cur.VCPUs, uint64(cur.MemoryMiB) << 20
			},
			Agent: v.Agent(),
			Vsock: func() (device.Counters, int, bool) {
				c, ok := v.VsockCounters()
				return c, v.VsockConns(), ok
			},
		}
		if req.Spec != nil {
			src.PodName = req.Spec.Annotations[annotationPodName]
			src.PodNamespace = req.Spec.Annotations[annotationPodNamespace]
		}
		o.m.Attach(src)
		o.serve(ctx, filepath.Join(req.Dir, MetricsSocketName), o.m.Handler(), "metrics")
	}
	if req.Config.Runtime.EnablePprof {
		o.serve(ctx, filepath.Join(req.Dir, PprofSocketName), pprofHandler(), "pprof")
	}
}

func (o *observability) serve(ctx context.Context, path string, h http.Handler, what string) {
	stop, err := metrics.ServeUnix(path, h)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("%s socket not served", what)
		return
	}
	o.stops = append(o.stops, stop)
	log.G(ctx).WithField("socket", path).Debugf("serving %s", what)
}

// observeContainerCreate records one container's creation; vmStart is
// the part of d the VM's start took (0 when the sandbox was running).
func (o *observability) observeContainerCreate(d, vmStart time.Duration) {
	if o != nil && o.m != nil {
		o.m.ObservePhase(metrics.PhaseContainerCreate, max(d-vmStart, 0))
	}
}

// stop closes the sockets.
func (o *observability) stop() {
	if o == nil {
		return
	}
	for _, s := range o.stops {
		s()
	}
	o.stops = nil
}

// pprofHandler is net/http/pprof's handlers, without touching
// http.DefaultServeMux.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// containerCreateObserver is a sandbox that records container creations
// (a VM sandbox with metrics).
type containerCreateObserver interface {
	// observeContainerCreate records a Create of d, which started the
	// sandbox when startedSandbox.
	observeContainerCreate(d time.Duration, startedSandbox bool)
}

var _ containerCreateObserver = (*vmSandbox)(nil)

func (s *vmSandbox) observeContainerCreate(d time.Duration, startedSandbox bool) {
	var vmStart time.Duration
	if startedSandbox {
		vmStart = s.v.Phases().Total()
	}
	s.obs.observeContainerCreate(d, vmStart)
}
