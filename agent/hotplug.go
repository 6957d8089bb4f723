package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"

	agentpb "github.com/vmpod/vmpod/proto"
)

const (
	// maxOnlineWait bounds OnlineCPUMem whatever deadline the caller set.
	maxOnlineWait = 60 * time.Second
	onlinePoll    = 50 * time.Millisecond
)

// sysfs is where the guest's CPUs and memory blocks are listed; a
// variable for tests.
var sysfs = "/sys"

// meminfoPath is read for MemTotal; a variable for tests.
var meminfoPath = "/proc/meminfo"

// OnlineCPUMem onlines what the host hot-added and waits until the guest
// has at least the CPUs and memory asked for (see agent.proto).
func (s *Server) OnlineCPUMem(ctx context.Context, req *agentpb.OnlineCPUMemRequest) (*agentpb.OnlineCPUMemResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, maxOnlineWait)
	defer cancel()
	for {
		// A CPU or block appears some time after the host plugged it (the
		// ACPI event is handled asynchronously): online again each round.
		if err := onlineAll(ctx); err != nil {
			return nil, err
		}
		resp, err := onlineNow()
		if err != nil {
			return nil, err
		}
		if resp.Vcpus >= req.GetVcpus() && resp.MemoryMib >= req.GetMemoryMib() {
			return resp, nil
		}
		select {
		case <-ctx.Done():
			log.G(ctx).WithFields(log.Fields{"vcpus": resp.Vcpus, "memory_mib": resp.MemoryMib}).Warn("hot-plugged CPUs or memory did not all come online")
			return resp, nil
		case <-time.After(onlinePoll):
		}
	}
}

// onlineAll writes "1" to every offline CPU's online file and "online" to
// every offline memory block's state. A block the kernel refuses to online
// (no memory for its memmap, say) is logged and skipped: the guest keeps
// it offline, and the caller sees the shortfall.
func onlineAll(ctx context.Context) error {
	cpus, err := filepath.Glob(filepath.Join(sysfs, "devices/system/cpu/cpu[0-9]*/online"))
	if err != nil {
		return err
	}
	for _, f := range cpus {
		onlineOne(ctx, f, "0", "1")
	}
	blocks, err := filepath.Glob(filepath.Join(sysfs, "devices/system/memory/memory[0-9]*/state"))
	if err != nil {
		return err
	}
	for _, f := range blocks {
		onlineOne(ctx, f, "offline", "online")
	}
	return nil
}

func onlineOne(ctx context.Context, path, offline, online string) {
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != offline {
		return
	}
	if err := os.WriteFile(path, []byte(online), 0); err != nil {
		log.G(ctx).WithError(err).WithField("path", path).Warn("online hot-plugged CPU or memory")
	}
}

// onlineNow counts what is online.
func onlineNow() (*agentpb.OnlineCPUMemResponse, error) {
	b, err := os.ReadFile(filepath.Join(sysfs, "devices/system/cpu/online"))
	if err != nil {
		return nil, fmt.Errorf("online CPUs: %w", err)
	}
	cpus, err := countCPUList(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("online CPUs %q: %w", b, err)
	}
	mib, err := onlineMemoryMiB()
	if err != nil {
		return nil, err
	}
	total, err := memTotalKiB()
	if err != nil {
		return nil, err
	}
	return &agentpb.OnlineCPUMemResponse{Vcpus: cpus, MemoryMib: mib, MemTotalKib: total}, nil
}

// countCPUList counts the CPUs of a kernel CPU list ("0-3,5").
func countCPUList(s string) (uint32, error) {
	var n uint32
	if s == "" {
		return 0, nil
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return 0, err
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil {
				return 0, err
			}
		}
		if b < a {
			return 0, fmt.Errorf("range %s is backwards", part)
		}
		n += uint32(b - a + 1)
	}
	return n, nil
}

// onlineMemoryMiB is the size of the online memory blocks.
func onlineMemoryMiB() (uint64, error) {
	dir := filepath.Join(sysfs, "devices/system/memory")
	b, err := os.ReadFile(filepath.Join(dir, "block_size_bytes"))
	if err != nil {
		return 0, fmt.Errorf("memory block size: %w", err)
	}
	size, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil || size == 0 {
		return 0, fmt.Errorf("memory block size %q: %w", b, errors.Join(err, errors.New("not a hex size")))
	}
	blocks, err := filepath.Glob(filepath.Join(dir, "memory[0-9]*/state"))
	if err != nil {
		return 0, err
	}
	var online uint64
	for _, f := range blocks {
		if st, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(st)) == "online" {
			online++
		}
	}
	return online * size >> 20, nil
}

func memTotalKiB() (uint64, error) {
	b, err := os.ReadFile(meminfoPath)
	if err != nil {
		return 0, fmt.Errorf("MemTotal: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("MemTotal %q: %w", rest, err)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("no MemTotal in %s", meminfoPath)
}
