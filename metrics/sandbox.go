// Package metrics produces one sandbox's Prometheus metrics in its shim:
// the shim's, QEMU's and virtiofsd's processes (from /proc), the VM's size,
// boot phases and agent RPC latency, the guest's own view (the agent's
// GuestMetrics call, bounded in time and size: the guest is untrusted) and
// the vsock backend's traffic. Families are named vmpod_<part>_*, in the
// spirit of kata-monitor's kata_hypervisor_*, kata_shim_*, kata_agent_*
// and kata_guest_*.
package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/prometheus/client_golang/prometheus"

	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/vsock/device"
)

// Namespace prefixes every family.
const Namespace = "vmpod"

// Boot phases, the values of the phase label of vmpod_boot_phase_seconds.
const (
	PhaseVMMStart        = "vmm_start"
	PhaseGuestBoot       = "guest_boot"
	PhaseAgentReady      = "agent_ready"
	PhaseContainerCreate = "container_create"
)

// DefaultGuestTimeout bounds the GuestMetrics call of one scrape.
const DefaultGuestTimeout = 2 * time.Second

// Source is what a sandbox tells the metrics about itself once its VM runs.
// Each func may be nil.
type Source struct {
	QEMUPid      func() int
	VirtiofsdPid func() int
	// Size is what the VM has now: it grows with CPU and memory hot-plug.
	Size func() (vcpus int, memoryBytes uint64)
	// Agent is the guest's agent, asked for GuestMetrics at each scrape.
	Agent agentpb.AgentService
	// Vsock returns the vsock backend's counters and open connections;
	// ok is false with the kernel's vhost-vsock.
	Vsock func() (c device.Counters, conns int, ok bool)
	// PodName and PodNamespace are the CRI pod's, when known.
	PodName, PodNamespace string
}

// Sandbox holds one sandbox's metrics.
type Sandbox struct {
	id           string
	shimPid      int
	guestTimeout time.Duration

	reg       *prometheus.Registry
	boot      *prometheus.HistogramVec
	rpc       *prometheus.HistogramVec
	rpcErrors *prometheus.CounterVec

	mu  sync.Mutex
	src *Source // nil until Attach
}

// New returns the metrics of sandbox id, whose shim is process shimPid.
// guestTimeout bounds the guest's part of a scrape (DefaultGuestTimeout if
// 0).
func New(id string, shimPid int, guestTimeout time.Duration) *Sandbox {
	if guestTimeout <= 0 {
		guestTimeout = DefaultGuestTimeout
	}
	s := &Sandbox{
		id: id, shimPid: shimPid, guestTimeout: guestTimeout,
		reg: prometheus.NewRegistry(),
		boot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "boot_phase_seconds",
			Help:    "How long each phase of the sandbox's start took: vmm_start (virtiofsd, vsock, QEMU up), guest_boot (to the agent accepting), agent_ready (to its first answer), container_create (each container's creation).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 15), // 5 ms .. 82 s
		}, []string{"phase"}),
		rpc: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "agent_rpc_duration_seconds",
			Help:    "Latency of the shim's calls to the guest agent, by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
		}, []string{"method"}),
		rpcErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "agent_rpc_errors_total",
			Help: "The shim's calls to the guest agent that failed, by method.",
		}, []string{"method"}),
	}
	s.reg.MustRegister(s.boot, s.rpc, s.rpcErrors, &collector{s: s})
	return s
}

// Registry is where the sandbox's metrics are gathered.
func (s *Sandbox) Registry() *prometheus.Registry { return s.reg }

// Attach gives the metrics the running sandbox's facts.
func (s *Sandbox) Attach(src Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.src = &src
}

func (s *Sandbox) source() *Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.src
}

// ObservePhase records one boot phase.
func (s *Sandbox) ObservePhase(phase string, d time.Duration) {
	s.boot.WithLabelValues(phase).Observe(d.Seconds())
}

// Interceptor times every agent call, for vmpod_agent_rpc_duration_seconds.
func (s *Sandbox) Interceptor() ttrpc.UnaryClientInterceptor {
	return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		if longPoll[info.FullMethod] {
			// It waits for an event, not for the agent: no latency.
			return invoke(ctx, req, resp)
		}
		start := time.Now()
		err := invoke(ctx, req, resp)
		m := methodName(info.FullMethod)
		s.rpc.WithLabelValues(m).Observe(time.Since(start).Seconds())
		if err != nil {
			s.rpcErrors.WithLabelValues(m).Inc()
		}
		return err
	}
}

// longPoll are the agent's methods that block until something happens.
var longPoll = map[string]bool{"/vmpod.agent.v1.Agent/GetOOMEvent": true}

// methodName is the method of "/vmpod.agent.v1.Agent/Check": the client
// makes the calls, so the label's values are the service's methods only.
func methodName(full string) string {
	return full[strings.LastIndexByte(full, '/')+1:]
}
