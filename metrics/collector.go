package metrics

import (
	"context"
	"os"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
}

// procDescs are the families of one host process (shim, hypervisor,
// virtiofsd).
type procDescs struct {
	cpu, rss, pss, fds, threads *prometheus.Desc
}

func newProcDescs(part, what string) procDescs {
	return procDescs{
		cpu:     desc(part+"_cpu_seconds_total", "CPU time (user + system) of "+what+"."),
		rss:     desc(part+"_resident_memory_bytes", "Resident set size of "+what+"."),
		pss:     desc(part+"_proportional_memory_bytes", "Proportional set size (smaps_rollup Pss) of "+what+"."),
		fds:     desc(part+"_open_fds", "Open file descriptors of "+what+"."),
		threads: desc(part+"_threads", "Threads of "+what+"."),
	}
}

var (
	shimDescs      = newProcDescs("shim", "the sandbox's shim")
	hypervisorDesc = newProcDescs("hypervisor", "the sandbox's QEMU")
	virtiofsdDescs = newProcDescs("virtiofsd", "the sandbox's virtiofsd")

	infoDesc   = desc("sandbox_info", "The sandbox, with its CRI pod's name and namespace when known; always 1.", "pod_name", "pod_namespace")
	vcpusDesc  = desc("vm_vcpus", "vCPUs the sandbox's VM was started with.")
	memoryDesc = desc("vm_memory_bytes", "Memory the sandbox's VM was started with.")

	guestUpDesc       = desc("guest_scrape_success", "1 when the guest answered GuestMetrics in time with a valid reply, else 0 (the guest_* and agent_* families are then absent).")
	guestDurationDesc = desc("guest_scrape_duration_seconds", "How long the GuestMetrics call of this scrape took.")
	guestMemDescs     = map[string]*prometheus.Desc{
		"total":     desc("guest_memory_total_bytes", "MemTotal of the guest's /proc/meminfo."),
		"free":      desc("guest_memory_free_bytes", "MemFree of the guest's /proc/meminfo."),
		"available": desc("guest_memory_available_bytes", "MemAvailable of the guest's /proc/meminfo."),
		"cached":    desc("guest_memory_cached_bytes", "Cached of the guest's /proc/meminfo."),
		"online":    desc("guest_memory_online_bytes", "Memory the guest kernel has online, its own reserved memory included (/sys/devices/system/memory); absent when the kernel has no memory hot-plug."),
	}
	guestCPUDesc    = desc("guest_cpu_seconds_total", "CPU time of the guest, all vCPUs, by mode (/proc/stat).", "mode")
	guestLoadDesc   = desc("guest_load_average", "The guest's load average (/proc/loadavg), by period.", "period")
	guestOOMDesc    = desc("guest_oom_kills_total", "Processes the guest kernel killed for want of memory (oom_kill in /proc/vmstat).")
	agentRSSDesc    = desc("agent_resident_memory_bytes", "Resident set size of the guest agent.")
	guestNetDescs   = newNetDescs()
	vsockBytesDesc  = desc("vsock_bytes_total", "Stream payload bytes through the vsock backend, by direction (to_guest, from_guest).", "direction")
	vsockPktsDesc   = desc("vsock_packets_total", "Packets through the vsock backend, by direction (to_guest, from_guest).", "direction")
	vsockRstDesc    = desc("vsock_resets_total", "RST packets of the vsock backend, by direction (sent, received).", "direction")
	vsockConnsDesc  = desc("vsock_connections", "Open connections of the vsock backend.")
	vsockOpenedDesc = desc("vsock_connections_opened_total", "Connections the vsock backend established, either way.")
)

type netDescs struct{ rxBytes, rxPackets, rxErrors, rxDrop, txBytes, txPackets, txErrors, txDrop *prometheus.Desc }

func newNetDescs() netDescs {
	d := func(name, help string) *prometheus.Desc {
		return desc("guest_network_"+name, help+" of a guest interface (/sys/class/net).", "interface")
	}
	return netDescs{
		rxBytes: d("receive_bytes_total", "Bytes received"), rxPackets: d("receive_packets_total", "Packets received"),
		rxErrors: d("receive_errors_total", "Receive errors"), rxDrop: d("receive_drop_total", "Received packets dropped"),
		txBytes: d("transmit_bytes_total", "Bytes sent"), txPackets: d("transmit_packets_total", "Packets sent"),
		txErrors: d("transmit_errors_total", "Transmit errors"), txDrop: d("transmit_drop_total", "Sent packets dropped"),
	}
}

// collector gathers what is read at scrape time.
type collector struct{ s *Sandbox }

// Describe sends nothing: the families present depend on the sandbox
// (virtiofsd, vhost-user vsock, a guest that answers), which makes this an
// unchecked collector.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	collectProc(ch, shimDescs, s.shimPid)
	src := s.source()
	if src == nil {
		return // the VM is not up yet
	}
	ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, src.PodName, src.PodNamespace)
	if src.QEMUPid != nil {
		collectProc(ch, hypervisorDesc, src.QEMUPid())
	}
	if src.VirtiofsdPid != nil {
		collectProc(ch, virtiofsdDescs, src.VirtiofsdPid())
	}
	if src.Size != nil {
		vcpus, mem := src.Size()
		ch <- prometheus.MustNewConstMetric(vcpusDesc, prometheus.GaugeValue, float64(vcpus))
		ch <- prometheus.MustNewConstMetric(memoryDesc, prometheus.GaugeValue, float64(mem))
	}
	if src.Vsock != nil {
		if cs, conns, ok := src.Vsock(); ok {
			counter := func(d *prometheus.Desc, v uint64, label string) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
			}
			counter(vsockBytesDesc, cs.RXBytes, "to_guest")
			counter(vsockBytesDesc, cs.TXBytes, "from_guest")
			counter(vsockPktsDesc, cs.RXPackets, "to_guest")
			counter(vsockPktsDesc, cs.TXPackets, "from_guest")
			counter(vsockRstDesc, cs.ResetsSent, "sent")
			counter(vsockRstDesc, cs.ResetsReceived, "received")
			ch <- prometheus.MustNewConstMetric(vsockConnsDesc, prometheus.GaugeValue, float64(conns))
			ch <- prometheus.MustNewConstMetric(vsockOpenedDesc, prometheus.CounterValue, float64(cs.ConnsOpened))
		}
	}
	if src.Agent != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.guestTimeout)
		defer cancel()
		start := time.Now()
		g, err := guestMetrics(ctx, src.Agent)
		ch <- prometheus.MustNewConstMetric(guestDurationDesc, prometheus.GaugeValue, time.Since(start).Seconds())
		up := 0.0
		if err == nil {
			up = 1
			collectGuest(ch, g)
		} else {
			// The host's own families still go out; the error is the
			// metric, and the shim's debug log says why.
			log.L.WithField("sandbox", s.id).WithError(err).Debug("guest metrics")
		}
		ch <- prometheus.MustNewConstMetric(guestUpDesc, prometheus.GaugeValue, up)
	}
}

// collectProc reports process pid; a process that is gone (or pid 0)
// reports nothing.
func collectProc(ch chan<- prometheus.Metric, d procDescs, pid int) {
	if pid <= 0 {
		return
	}
	st, err := ReadProc(pid)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(d.cpu, prometheus.CounterValue, st.CPUSeconds)
	ch <- prometheus.MustNewConstMetric(d.rss, prometheus.GaugeValue, float64(st.RSSBytes))
	ch <- prometheus.MustNewConstMetric(d.pss, prometheus.GaugeValue, float64(st.PSSBytes))
	ch <- prometheus.MustNewConstMetric(d.fds, prometheus.GaugeValue, float64(st.FDs))
	ch <- prometheus.MustNewConstMetric(d.threads, prometheus.GaugeValue, float64(st.Threads))
}

// SelfPid is the shim's pid, for New.
func SelfPid() int { return os.Getpid() }
