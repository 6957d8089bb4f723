package shim

import (
	"context"
	"fmt"
	"math"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/sizing"
)

// Resizer is a sandbox whose VM can grow while it runs (CPU and memory
// hot-plug). A sandbox that cannot (microvm, resource_management =
// "static", a test's host sandbox) does not implement it, or reports no
// room: then containers get what the VM was booted with.
type Resizer interface {
	// Resources is what the VM has now and the most it can grow to.
	Resources() (cur, max hypervisor.Resources)
	// Grow hot-adds vCPUs and memory until the VM has at least want
	// (capped at max) and the guest has them online. It returns what
	// the VM has, also on error.
	Grow(ctx context.Context, want hypervisor.Resources) (hypervisor.Resources, error)
}

// demandOf is what a container's resources ask of the VM: its CPU quota
// rounded up to whole vCPUs and its memory limit rounded up to MiB. A
// container without a quota or a limit asks for none.
func demandOf(res *specs.LinuxResources) sizing.Size {
	w := sizing.ResourcesWorkload(res)
	return sizing.Size{VCPUs: uint32(min(w.CPUs, math.MaxUint32)), MemoryMiB: uint32(min(w.MemoryMiB, math.MaxUint32))}
}

// mergeDemand is a container's demand after an update: what the update
// sets replaces, what it leaves out stays (containerd's `ctr task update`
// may send only a memory limit).
func mergeDemand(old sizing.Size, res *specs.LinuxResources) sizing.Size {
	d := demandOf(res)
	if res == nil || res.CPU == nil || res.CPU.Quota == nil {
		d.VCPUs = old.VCPUs
	}
	if res == nil || res.Memory == nil || res.Memory.Limit == nil {
		d.MemoryMiB = old.MemoryMiB
	}
	return d
}

// podDemand is what a pod's VM needs: the configured defaults (the guest's
// own share) plus every live container's demand. The sandbox (pause)
// container is left out by the caller. A VM sized statically from the pod's
// sandbox annotations already has the pod's total; containers within that
// total then ask for no more than the VM has, so nothing is counted twice.
func podDemand(defaults sizing.Size, containers []sizing.Size) sizing.Size {
	vcpus, mem := uint64(defaults.VCPUs), uint64(defaults.MemoryMiB)
	for _, c := range containers {
		vcpus += uint64(c.VCPUs)
		mem += uint64(c.MemoryMiB)
	}
	return sizing.Size{VCPUs: uint32(min(vcpus, math.MaxUint32)), MemoryMiB: uint32(min(mem, math.MaxUint32))}
}

// growTarget is what the VM must grow to for demand, capped at max, and
// whether it must grow at all. Nothing ever shrinks: a dimension the VM
// already covers keeps its current size.
func growTarget(cur, limit hypervisor.Resources, demand sizing.Size) (hypervisor.Resources, bool) {
	want := hypervisor.Resources{
		VCPUs:     max(min(int(min(demand.VCPUs, math.MaxInt32)), limit.VCPUs), cur.VCPUs),
		MemoryMiB: max(min(int(min(demand.MemoryMiB, math.MaxInt32)), limit.MemoryMiB), cur.MemoryMiB),
	}
	return want, want != cur
}

// growFor grows the sandbox's VM, before container id is created or
// updated, to the pod's demand with id counted at demand. The caller
// records demand on the container once the agent accepted it.
func (s *service) growFor(ctx context.Context, sb Sandbox, id string, demand sizing.Size) error {
	r, ok := sb.(Resizer)
	if !ok {
		return nil
	}
	// One resize at a time: two containers created or updated together
	// must see each other's demand.
	s.resizeMu.Lock()
	defer s.resizeMu.Unlock()
	s.mu.Lock()
	defaults := s.defaults
	all := []sizing.Size{demand}
	for cid, c := range s.containers {
		if cid == id || c.podSandbox {
			continue
		}
		all = append(all, c.demand)
	}
	s.mu.Unlock()
	need := podDemand(defaults, all)
	cur, limit := r.Resources()
	want, grow := growTarget(cur, limit, need)
	logger := log.G(ctx).WithFields(log.Fields{"id": id, "vcpus": cur.VCPUs, "memory_mib": cur.MemoryMiB, "pod_vcpus": need.VCPUs, "pod_memory_mib": need.MemoryMiB})
	if uint64(need.VCPUs) > uint64(limit.VCPUs) || uint64(need.MemoryMiB) > uint64(limit.MemoryMiB) {
		logger.WithFields(log.Fields{"max_vcpus": limit.VCPUs, "max_memory_mib": limit.MemoryMiB}).Warn("the pod asks for more than its VM can grow to (max_vcpus, max_memory); it gets the maximum")
	}
	if !grow {
		return nil
	}
	logger.WithFields(log.Fields{"to_vcpus": want.VCPUs, "to_memory_mib": want.MemoryMiB}).Info("growing the pod's VM")
	got, err := r.Grow(ctx, want)
	if err != nil {
		return fmt.Errorf("container %s: grow the pod's VM from %d vCPUs and %d MiB to %d vCPUs and %d MiB (it has %d and %d now): %w",
			id, cur.VCPUs, cur.MemoryMiB, want.VCPUs, want.MemoryMiB, got.VCPUs, got.MemoryMiB, err)
	}
	return nil
}
