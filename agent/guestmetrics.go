package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	agentpb "github.com/vmpod/vmpod/proto"
)

// Bounds of GuestMetrics: what it reads and what it returns.
const (
	// MaxMetricInterfaces is the most interfaces GuestMetrics reports;
	// the host refuses more.
	MaxMetricInterfaces = 32
	// maxProcFile bounds one read of a /proc or /sys file.
	maxProcFile = 64 << 10
	// userHZ is the unit of /proc/stat: USER_HZ is 100 on every Linux
	// architecture the guest runs on.
	userHZ = 100
)

// guestPaths are where GuestMetrics reads; tests point them at fixtures.
type guestPaths struct {
	proc, sysClassNet, sysMemory string
}

var defaultGuestPaths = guestPaths{proc: "/proc", sysClassNet: "/sys/class/net", sysMemory: "/sys/devices/system/memory"}

// maxMemoryBlocks bounds the memory blocks read: 1 TiB in 128 MiB blocks.
const maxMemoryBlocks = 8192

// GuestMetrics reads the guest's memory, CPU time, load, network counters,
// the agent's own RSS and the kernel's OOM kill count. A file that cannot
// be read leaves its fields zero: metrics are best effort, and one missing
// file must not hide the others.
func (s *Server) GuestMetrics(ctx context.Context, _ *agentpb.GuestMetricsRequest) (*agentpb.GuestMetricsResponse, error) {
	return readGuestMetrics(defaultGuestPaths)
}

func readGuestMetrics(p guestPaths) (*agentpb.GuestMetricsResponse, error) {
	resp := &agentpb.GuestMetricsResponse{}
	if kv, err := readKV(filepath.Join(p.proc, "meminfo")); err == nil {
		kib := func(k string) uint64 { return kv[k] * 1024 }
		resp.MemTotalBytes = kib("MemTotal")
		resp.MemFreeBytes = kib("MemFree")
		resp.MemAvailableBytes = kib("MemAvailable")
		resp.MemCachedBytes = kib("Cached")
	}
	if cpu, err := readCPUTime(filepath.Join(p.proc, "stat")); err == nil {
		resp.Cpu = cpu
	}
	if data, err := readBounded(filepath.Join(p.proc, "loadavg")); err == nil {
		f := strings.Fields(string(data))
		if len(f) >= 3 {
			resp.Load1, _ = strconv.ParseFloat(f[0], 64)
			resp.Load5, _ = strconv.ParseFloat(f[1], 64)
			resp.Load15, _ = strconv.ParseFloat(f[2], 64)
		}
	}
	if kv, err := readKV(filepath.Join(p.proc, "self", "status")); err == nil {
		resp.AgentRssBytes = kv["VmRSS"] * 1024
	}
	if kv, err := readKV(filepath.Join(p.proc, "vmstat")); err == nil {
		resp.OomKills = kv["oom_kill"]
	}
	resp.Interfaces = readNetInterfaces(p.sysClassNet)
	resp.MemOnlineBytes = readOnlineMemory(p.sysMemory)
	return resp, nil
}

// readOnlineMemory is the block size times the online memory blocks; 0
// when the kernel does not list them.
func readOnlineMemory(dir string) uint64 {
	data, err := readBounded(filepath.Join(dir, "block_size_bytes"))
	if err != nil {
		return 0
	}
	block, err := strconv.ParseUint(strings.TrimSpace(string(data)), 16, 64)
	if err != nil || block == 0 {
		return 0
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var online uint64
	for i, e := range ents {
		if i >= maxMemoryBlocks {
			break
		}
		if !strings.HasPrefix(e.Name(), "memory") {
			continue
		}
		if st, err := readBounded(filepath.Join(dir, e.Name(), "online")); err == nil && strings.TrimSpace(string(st)) == "1" {
			online++
		}
	}
	return online * block
}

// readBounded reads at most maxProcFile bytes of path.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxProcFile))
}

// readKV reads "key: value [kB]" (meminfo, status) or "key value"
// (vmstat) lines into a map; the unit is left to the caller.
func readKV(path string) (map[string]uint64, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		out[strings.TrimSuffix(f[0], ":")] = v
	}
	return out, nil
}

// readCPUTime reads the machine-wide "cpu" line of /proc/stat.
func readCPUTime(path string) (*agentpb.GuestCPUTime, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return nil, fmt.Errorf("%s: no cpu line", path)
	}
	var v [8]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: cpu field %d: %w", path, i+1, err)
		}
		v[i] = n * 1000 / userHZ
	}
	return &agentpb.GuestCPUTime{
		UserMs: v[0], NiceMs: v[1], SystemMs: v[2], IdleMs: v[3],
		IowaitMs: v[4], IrqMs: v[5], SoftirqMs: v[6], StealMs: v[7],
	}, nil
}

// readNetInterfaces reads the counters of at most MaxMetricInterfaces
// interfaces, by name.
func readNetInterfaces(dir string) []*agentpb.GuestNetInterface {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) > MaxMetricInterfaces {
		names = names[:MaxMetricInterfaces]
	}
	var out []*agentpb.GuestNetInterface
	for _, name := range names {
		stat := func(k string) uint64 {
			data, err := readBounded(filepath.Join(dir, name, "statistics", k))
			if err != nil {
				return 0
			}
			v, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
			return v
		}
		out = append(out, &agentpb.GuestNetInterface{
			Name:    name,
			RxBytes: stat("rx_bytes"), RxPackets: stat("rx_packets"), RxErrors: stat("rx_errors"), RxDropped: stat("rx_dropped"),
			TxBytes: stat("tx_bytes"), TxPackets: stat("tx_packets"), TxErrors: stat("tx_errors"), TxDropped: stat("tx_dropped"),
		})
	}
	return out
}
