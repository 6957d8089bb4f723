package metrics

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	dto "github.com/prometheus/client_model/go"

	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/vsock/device"
)

// fakeAgent answers GuestMetrics with reply, or blocks until release
// closes (ignoring its context, as a client stuck on a dead connection
// would) when block is set. The other methods are not called.
type fakeAgent struct {
	agentpb.AgentService
	reply   *agentpb.GuestMetricsResponse
	err     error
	block   bool
	release chan struct{}
}

func (f *fakeAgent) GuestMetrics(ctx context.Context, _ *agentpb.GuestMetricsRequest) (*agentpb.GuestMetricsResponse, error) {
	if f.block {
		<-f.release
	}
	return f.reply, f.err
}

func goodReply() *agentpb.GuestMetricsResponse {
	return &agentpb.GuestMetricsResponse{
		MemTotalBytes: 512 << 20, MemFreeBytes: 400 << 20, MemAvailableBytes: 450 << 20, MemCachedBytes: 20 << 20,
		Cpu:   &agentpb.GuestCPUTime{UserMs: 1500, IdleMs: 9000},
		Load1: 0.5, Load5: 0.25, Load15: 0.1,
		Interfaces:    []*agentpb.GuestNetInterface{{Name: "lo", RxBytes: 10}, {Name: "eth0", TxPackets: 3}},
		AgentRssBytes: 20 << 20, OomKills: 2,
	}
}

func gather(t *testing.T, s *Sandbox) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func value(f *dto.MetricFamily, labels ...string) float64 {
	if f == nil {
		return math.NaN()
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return math.NaN()
}

func attach(s *Sandbox, agent agentpb.AgentService) {
	s.Attach(Source{
		QEMUPid: os.Getpid, Size: func() (int, uint64) { return 2, 512 << 20 }, Agent: agent,
		Vsock: func() (device.Counters, int, bool) {
			return device.Counters{RXBytes: 7, TXBytes: 9, ResetsSent: 1, ConnsOpened: 3}, 2, true
		},
		PodName: "web", PodNamespace: "default",
	})
}

func TestSandboxMetrics(t *testing.T) {
	s := New("sb1", os.Getpid(), time.Second)
	if f := gather(t, s); f["vmpod_shim_resident_memory_bytes"] == nil || f["vmpod_guest_scrape_success"] != nil {
		t.Fatalf("before Attach: want only the shim's families, got %v", keys(f))
	}
	attach(s, &fakeAgent{reply: goodReply()})
	s.ObservePhase(PhaseVMMStart, 100*time.Millisecond)
	s.ObservePhase(PhaseGuestBoot, 2*time.Second)
	f := gather(t, s)
	for name, want := range map[string]float64{
		"vmpod_guest_scrape_success":           1,
		"vmpod_guest_memory_total_bytes":       512 << 20,
		"vmpod_guest_memory_available_bytes":   450 << 20,
		"vmpod_agent_resident_memory_bytes":    20 << 20,
		"vmpod_guest_oom_kills_total":          2,
		"vmpod_vm_vcpus":                       2,
		"vmpod_vm_memory_bytes":                512 << 20,
		"vmpod_vsock_connections":              2,
		"vmpod_vsock_connections_opened_total": 3,
	} {
		if got := value(f[name]); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := value(f["vmpod_guest_cpu_seconds_total"], "mode", "user"); got != 1.5 {
		t.Errorf("guest user CPU %v s, want 1.5", got)
	}
	if got := value(f["vmpod_guest_network_transmit_packets_total"], "interface", "eth0"); got != 3 {
		t.Errorf("eth0 tx packets %v, want 3", got)
	}
	if got := value(f["vmpod_vsock_bytes_total"], "direction", "from_guest"); got != 9 {
		t.Errorf("vsock bytes from the guest %v, want 9", got)
	}
	if got := value(f["vmpod_boot_phase_seconds"], "phase", PhaseGuestBoot); got != 1 {
		t.Errorf("guest_boot observations %v, want 1", got)
	}
	if got := value(f["vmpod_sandbox_info"], "pod_name", "web", "pod_namespace", "default"); got != 1 {
		t.Errorf("sandbox_info with the pod's name: %v", got)
	}
	// The "QEMU" here is this test process: alive, so it has memory.
	if got := value(f["vmpod_hypervisor_resident_memory_bytes"]); !(got > 0) {
		t.Errorf("hypervisor RSS %v, want > 0", got)
	}
	if got := value(f["vmpod_hypervisor_threads"]); !(got >= 1) {
		t.Errorf("hypervisor threads %v", got)
	}
}

// A slow or hostile agent bounds nothing but its own part: the scrape ends
// in time with the host's families and guest_scrape_success 0, and a
// reply out of bounds is refused whole.
func TestHostileAgentCannotHangOrFloodAScrape(t *testing.T) {
	const guestTimeout = 300 * time.Millisecond
	release := make(chan struct{})
	defer close(release)
	s := New("slow", os.Getpid(), guestTimeout)
	attach(s, &fakeAgent{block: true, release: release, reply: goodReply()})
	start := time.Now()
	f := gather(t, s)
	if d := time.Since(start); d > guestTimeout+2*time.Second {
		t.Errorf("scrape took %v with a hanging agent, bound is %v", d, guestTimeout)
	}
	if got := value(f["vmpod_guest_scrape_success"]); got != 0 {
		t.Errorf("guest_scrape_success %v with a hanging agent, want 0", got)
	}
	if f["vmpod_hypervisor_resident_memory_bytes"] == nil || f["vmpod_vsock_bytes_total"] == nil {
		t.Errorf("host families missing when the guest hangs: %v", keys(f))
	}
	if f["vmpod_guest_memory_total_bytes"] != nil {
		t.Error("guest families served without an answer")
	}

	many := goodReply()
	many.Interfaces = nil
	for i := 0; i < 1000; i++ {
		many.Interfaces = append(many.Interfaces, &agentpb.GuestNetInterface{Name: "eth" + strings.Repeat("x", 10) + string(rune('a'+i%26))})
	}
	huge := goodReply()
	huge.Interfaces = []*agentpb.GuestNetInterface{{Name: strings.Repeat("n", MaxGuestReply)}}
	for name, reply := range map[string]*agentpb.GuestMetricsResponse{
		"too many interfaces": many,
		"oversized":           huge,
		"free beyond total":   func() *agentpb.GuestMetricsResponse { r := goodReply(); r.MemFreeBytes = r.MemTotalBytes + 1; return r }(),
		"NaN load":            func() *agentpb.GuestMetricsResponse { r := goodReply(); r.Load5 = math.NaN(); return r }(),
		"name with newline":   func() *agentpb.GuestMetricsResponse { r := goodReply(); r.Interfaces[0].Name = "a\nb"; return r }(),
		"duplicate interface": func() *agentpb.GuestMetricsResponse { r := goodReply(); r.Interfaces[1].Name = "lo"; return r }(),
		"nil reply":           nil,
	} {
		s := New("bad", os.Getpid(), guestTimeout)
		attach(s, &fakeAgent{reply: reply})
		f := gather(t, s)
		if got := value(f["vmpod_guest_scrape_success"]); got != 0 {
			t.Errorf("%s: guest_scrape_success %v, want 0 (refused)", name, got)
		}
		if f["vmpod_guest_network_receive_bytes_total"] != nil || f["vmpod_guest_memory_total_bytes"] != nil {
			t.Errorf("%s: guest families served from a refused reply", name)
		}
	}
}

func TestInterceptorTimesCalls(t *testing.T) {
	s := New("rpc", os.Getpid(), 0)
	icpt := s.Interceptor()
	info := &ttrpc.UnaryClientInfo{FullMethod: "/vmpod.agent.v1.Agent/CreateContainer"}
	ok := func(context.Context, *ttrpc.Request, *ttrpc.Response) error { return nil }
	fail := func(context.Context, *ttrpc.Request, *ttrpc.Response) error { return context.DeadlineExceeded }
	_ = icpt(context.Background(), nil, nil, info, ok)
	if err := icpt(context.Background(), nil, nil, info, fail); err != context.DeadlineExceeded {
		t.Errorf("interceptor changed the error: %v", err)
	}
	_ = icpt(context.Background(), nil, nil, &ttrpc.UnaryClientInfo{FullMethod: "/vmpod.agent.v1.Agent/GetOOMEvent"}, ok)
	f := gather(t, s)
	if got := value(f["vmpod_agent_rpc_duration_seconds"], "method", "GetOOMEvent"); !math.IsNaN(got) {
		t.Errorf("the GetOOMEvent long poll timed (%v observations)", got)
	}
	if got := value(f["vmpod_agent_rpc_duration_seconds"], "method", "CreateContainer"); got != 2 {
		t.Errorf("CreateContainer observations %v, want 2", got)
	}
	if got := value(f["vmpod_agent_rpc_errors_total"], "method", "CreateContainer"); got != 1 {
		t.Errorf("CreateContainer errors %v, want 1", got)
	}
}

func TestReadProc(t *testing.T) {
	st, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.RSSBytes == 0 || st.FDs < 3 || st.Threads < 1 || st.CPUSeconds < 0 {
		t.Errorf("implausible %+v for this process", st)
	}
	if os.Geteuid() == 0 && st.PSSBytes == 0 {
		t.Errorf("no PSS as root: %+v", st)
	}
	if _, err := ReadProc(0); err == nil {
		t.Error("pid 0 read")
	}
}

func keys(m map[string]*dto.MetricFamily) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
