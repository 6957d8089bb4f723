package metrics

import (
	"context"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	agentpb "github.com/vmpod/vmpod/proto"
)

// Bounds on a GuestMetrics reply. The guest is untrusted: a reply beyond
// them is refused whole, so that a hostile agent can neither blow up the
// series count nor feed nonsense into an operator's graphs.
const (
	MaxGuestReply      = 16 << 10 // bytes, marshalled
	MaxGuestInterfaces = 32
	maxIfName          = 15 // IFNAMSIZ - 1
	// maxGuestMemory is more than any VM vmpod starts (config.MaxMemoryMiB).
	maxGuestMemory = 1 << 40
	maxLoad        = 1 << 20
)

// errGuestTimeout: the guest did not answer within the scrape's bound.
var errGuestTimeout = errors.New("guest metrics: no answer in time")

// guestMetrics asks the agent and checks its reply. The call runs on a
// goroutine of its own so that the deadline holds even against a client
// that ignores ctx.
func guestMetrics(ctx context.Context, agent agentpb.AgentService) (*agentpb.GuestMetricsResponse, error) {
	type result struct {
		r   *agentpb.GuestMetricsResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := agent.GuestMetrics(ctx, &agentpb.GuestMetricsRequest{})
		done <- result{r, err}
	}()
	select {
	case res := <-done:
		if res.err != nil {
			return nil, fmt.Errorf("guest metrics: %w", res.err)
		}
		if err := validateGuest(res.r); err != nil {
			return nil, fmt.Errorf("guest metrics: refused reply: %w", err)
		}
		return res.r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", errGuestTimeout, ctx.Err())
	}
}

// validateGuest checks a reply against the bounds.
func validateGuest(r *agentpb.GuestMetricsResponse) error {
	if r == nil {
		return errors.New("empty reply")
	}
	if n := proto.Size(r); n > MaxGuestReply {
		return fmt.Errorf("reply of %d bytes, more than %d", n, MaxGuestReply)
	}
	if r.MemTotalBytes > maxGuestMemory || r.MemOnlineBytes > maxGuestMemory {
		return fmt.Errorf("mem_total_bytes %d or mem_online_bytes %d beyond %d", r.MemTotalBytes, r.MemOnlineBytes, uint64(maxGuestMemory))
	}
	for name, v := range map[string]uint64{"mem_free_bytes": r.MemFreeBytes, "mem_available_bytes": r.MemAvailableBytes, "mem_cached_bytes": r.MemCachedBytes, "agent_rss_bytes": r.AgentRssBytes} {
		if v > r.MemTotalBytes {
			return fmt.Errorf("%s %d beyond mem_total_bytes %d", name, v, r.MemTotalBytes)
		}
	}
	for name, v := range map[string]float64{"load1": r.Load1, "load5": r.Load5, "load15": r.Load15} {
		if math.IsNaN(v) || v < 0 || v > maxLoad {
			return fmt.Errorf("%s %v out of range", name, v)
		}
	}
	if len(r.Interfaces) > MaxGuestInterfaces {
		return fmt.Errorf("%d interfaces, more than %d", len(r.Interfaces), MaxGuestInterfaces)
	}
	seen := map[string]bool{}
	for i, itf := range r.Interfaces {
		name := itf.GetName()
		if name == "" || len(name) > maxIfName || !utf8.ValidString(name) {
			return fmt.Errorf("interface %d: bad name %q", i, name)
		}
		for _, c := range name {
			if c <= ' ' || c == '/' || c == 0x7f {
				return fmt.Errorf("interface %d: bad name %q", i, name)
			}
		}
		if seen[name] {
			return fmt.Errorf("interface %q reported twice", name)
		}
		seen[name] = true
	}
	return nil
}

func collectGuest(ch chan<- prometheus.Metric, r *agentpb.GuestMetricsResponse) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(guestMemDescs["total"], float64(r.MemTotalBytes))
	gauge(guestMemDescs["free"], float64(r.MemFreeBytes))
	gauge(guestMemDescs["available"], float64(r.MemAvailableBytes))
	gauge(guestMemDescs["cached"], float64(r.MemCachedBytes))
	if r.MemOnlineBytes > 0 {
		gauge(guestMemDescs["online"], float64(r.MemOnlineBytes))
	}
	if c := r.GetCpu(); c != nil {
		for mode, ms := range map[string]uint64{
			"user": c.UserMs, "nice": c.NiceMs, "system": c.SystemMs, "idle": c.IdleMs,
			"iowait": c.IowaitMs, "irq": c.IrqMs, "softirq": c.SoftirqMs, "steal": c.StealMs,
		} {
			counter(guestCPUDesc, float64(ms)/1000, mode)
		}
	}
	gauge(guestLoadDesc, r.Load1, "1m")
	gauge(guestLoadDesc, r.Load5, "5m")
	gauge(guestLoadDesc, r.Load15, "15m")
	gauge(agentRSSDesc, float64(r.AgentRssBytes))
	counter(guestOOMDesc, float64(r.OomKills))
	d := guestNetDescs
	for _, itf := range r.Interfaces {
		n := itf.GetName()
		counter(d.rxBytes, float64(itf.RxBytes), n)
		counter(d.rxPackets, float64(itf.RxPackets), n)
		counter(d.rxErrors, float64(itf.RxErrors), n)
		counter(d.rxDrop, float64(itf.RxDropped), n)
		counter(d.txBytes, float64(itf.TxBytes), n)
		counter(d.txPackets, float64(itf.TxPackets), n)
		counter(d.txErrors, float64(itf.TxErrors), n)
		counter(d.txDrop, float64(itf.TxDropped), n)
	}
}
