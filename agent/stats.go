package agent

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"

	agentpb "github.com/vmpod/vmpod/proto"
)

// statsResponse converts libcontainer's cgroup statistics, which have the
// same shape for cgroup v1 and v2, into the agent's message. memPath is the
// container's memory cgroup directory, read for the OOM counters that the
// statistics lack.
func statsResponse(s *cgroups.Stats, memPath string) *agentpb.StatsContainerResponse {
	cpu := s.CpuStats
	mem := s.MemoryStats
	resp := &agentpb.StatsContainerResponse{
		Cpu: &agentpb.CPUStats{
			UsageUsec:     cpu.CpuUsage.TotalUsage / 1000,
			UserUsec:      cpu.CpuUsage.UsageInUsermode / 1000,
			SystemUsec:    cpu.CpuUsage.UsageInKernelmode / 1000,
			NrPeriods:     cpu.ThrottlingData.Periods,
			NrThrottled:   cpu.ThrottlingData.ThrottledPeriods,
			ThrottledUsec: cpu.ThrottlingData.ThrottledTime / 1000,
		},
		Memory: &agentpb.MemoryStats{
			UsageBytes:     mem.Usage.Usage,
			LimitBytes:     mem.Usage.Limit,
			MaxUsageBytes:  mem.Usage.MaxUsage,
			CacheBytes:     mem.Cache,
			SwapUsageBytes: mem.SwapUsage.Usage,
			// v1 names it rss, v2 anon.
			RssBytes:  firstOf(mem.Stats, "total_rss", "rss", "anon"),
			AnonBytes: firstOf(mem.Stats, "anon", "total_rss", "rss"),
			FileBytes: firstOf(mem.Stats, "file", "total_cache", "cache"),
		},
		Pids: &agentpb.PidsStats{
			Current: s.PidsStats.Current,
			Limit:   s.PidsStats.Limit,
		},
		Io: &agentpb.IOStats{
			ServiceBytes: ioEntries(s.BlkioStats.IoServiceBytesRecursive),
			Serviced:     ioEntries(s.BlkioStats.IoServicedRecursive),
		},
	}
	resp.Memory.OomEvents, resp.Memory.OomKillEvents = oomCounters(memPath)
	return resp
}

func firstOf(m map[string]uint64, keys ...string) uint64 {
	for _, k := range keys {
		if v, ok := m[k]; ok {
			return v
		}
	}
	return 0
}

// maxIOEntries bounds the IO entries of one reply.
const maxIOEntries = 256

func ioEntries(in []cgroups.BlkioStatEntry) []*agentpb.IOEntry {
	out := make([]*agentpb.IOEntry, 0, min(len(in), maxIOEntries))
	for _, e := range in[:min(len(in), maxIOEntries)] {
		out = append(out, &agentpb.IOEntry{Major: e.Major, Minor: e.Minor, Op: e.Op, Value: e.Value})
	}
	return out
}

// oomCounters reads the OOM counters of a memory cgroup: memory.events
// (v2: oom, oom_kill) or memory.oom_control (v1: oom_kill, and under_oom
// as the only trace of an OOM without a kill).
func oomCounters(dir string) (oom, kills uint64) {
	if dir == "" {
		return 0, 0
	}
	if kv := readKeyValues(filepath.Join(dir, "memory.events")); kv != nil {
		return kv["oom"], kv["oom_kill"]
	}
	kv := readKeyValues(filepath.Join(dir, "memory.oom_control"))
	return kv["oom_kill"], kv["oom_kill"]
}

func readKeyValues(path string) map[string]uint64 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	kv := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			kv[k] = n
		}
	}
	return kv
}
