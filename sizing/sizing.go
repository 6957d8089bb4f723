// Package sizing decides how many vCPUs and MiB of memory a sandbox's VM
// boots with: the configured defaults plus what the pod's containers ask
// for, within the host's and the configuration's limits.
//
// What the pod asks for comes from the annotations containerd 1.7+ and
// 2.x put on the sandbox container (from the kubelet's
// LinuxPodSandboxConfig.Resources, the pod's total), as Kata's
// static_sandbox_resource_mgmt and gVisor read them. containerd 1.6 sends
// none; then the sandbox container's own linux.resources count (a
// container run by ctr or nerdctl is its own sandbox).
package sizing

import (
	"fmt"
	"math"
	"runtime"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
)

// containerd's sandbox annotations (internal/cri/annotations in
// containerd v2, pkg/cri/annotations in 1.7): decimal integers, as the
// kubelet's LinuxContainerResources fields.
const (
	AnnotationCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period" // µs
	AnnotationCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"  // µs per period; 0 or -1: no limit
	AnnotationCPUShares = "io.kubernetes.cri.sandbox-cpu-shares" // weight; does not size the VM
	AnnotationMemory    = "io.kubernetes.cri.sandbox-memory"     // bytes; 0 or -1: no limit
)

// Bounds beyond which a sandbox annotation is garbage, not a pod's wish.
const (
	maxCPUPeriod = 1_000_000 // µs: the kernel's CFS period is 1 ms..1 s
	minCPUPeriod = 1_000
	maxCPUShares = 262_144 // cgroup v1 cpu.shares
	// maxCPUs and maxMemory: no pod asks for more; above, the value is
	// a mistake (and ceil(quota/period) must not overflow).
	maxCPUs   = 1 << 16
	maxMemory = 1 << 52 // bytes, 4 PiB
)

// Size is the number of vCPUs and MiB of memory of a VM.
type Size struct {
	VCPUs     uint32
	MemoryMiB uint32
}

// Workload is what a pod's containers ask for beyond the VM's defaults.
type Workload struct {
	CPUs      uint64 // whole CPUs: a CFS quota over its period, rounded up
	MemoryMiB uint64 // a memory limit in MiB, rounded up
}

// hostCPUs is the host's CPU count; a variable for tests.
var hostCPUs = func() int { return max(runtime.NumCPU(), 1) }

// Limits returns the most vCPUs and memory a VM of configuration q may
// have. It is the one place that caps a VM, at creation and (hot-plug)
// later: more vCPUs than the host has only slow a guest down.
func Limits(q config.QEMU) Size {
	mem := q.MaxMemory
	if mem == 0 { // a config.QEMU that was not loaded from a file
		mem = config.MaxMemoryMiB
	}
	return Size{
		VCPUs:     min(q.EffectiveMaxVCPUs(hostCPUs()), hypervisor.MaxVCPUs),
		MemoryMiB: max(mem, q.DefaultMemory),
	}
}

// For sizes the VM of a sandbox whose first container has spec, under
// [runtime] resource_management = mode:
//   - with containerd's sandbox annotations, the defaults plus the pod's
//     total when mode sizes at creation ("static", "both"), the defaults
//     alone for "hotplug";
//   - without them (containerd 1.6, ctr, nerdctl), as before: the defaults
//     plus the container's own linux.resources, unless mode is "hotplug".
//
// Additions are capped by Limits; the defaults themselves never shrink.
// A malformed sandbox annotation is an error naming it and its value,
// whatever the mode: containerd wrote it from the pod, and a pod that
// cannot be sized as asked must not run smaller than it thinks.
func For(q config.QEMU, mode string, spec *specs.Spec) (Size, error) {
	base := Size{VCPUs: q.DefaultVCPUs, MemoryMiB: q.DefaultMemory}
	if spec == nil {
		return base, nil
	}
	w, ok, err := SandboxWorkload(spec.Annotations)
	if err != nil {
		return base, err
	}
	if !ok {
		w = ContainerWorkload(spec)
	}
	if !config.SizesAtCreation(mode) {
		return base, nil
	}
	return Add(base, w, Limits(q)), nil
}

// Add returns base grown by w, each within limit but never below base.
func Add(base Size, w Workload, limit Size) Size {
	grow := func(b uint32, add uint64, lim uint32) uint32 {
		if add > math.MaxUint32 {
			add = math.MaxUint32
		}
		return max(b, uint32(min(uint64(b)+add, uint64(lim))))
	}
	return Size{
		VCPUs:     grow(base.VCPUs, w.CPUs, limit.VCPUs),
		MemoryMiB: grow(base.MemoryMiB, w.MemoryMiB, limit.MemoryMiB),
	}
}

// SandboxWorkload reads containerd's sandbox annotations; ok is false
// when none is present. Like Kata, CPU shares add nothing, and no quota
// means no CPUs beyond the defaults. Unlike Kata, which logs a warning
// and counts a value it cannot parse as 0, a malformed value is an error
// naming the annotation and the value.
func SandboxWorkload(ann map[string]string) (w Workload, ok bool, err error) {
	num := func(key string, lo, hi int64) (int64, error) {
		s, present := ann[key]
		if !present {
			return 0, nil
		}
		ok = true
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("sandbox annotation %s=%q: not a decimal integer", key, s)
		}
		if v < lo || v > hi {
			return 0, fmt.Errorf("sandbox annotation %s=%q: outside %d..%d", key, s, lo, hi)
		}
		return v, nil
	}
	period, err := num(AnnotationCPUPeriod, 0, maxCPUPeriod)
	if err != nil {
		return w, ok, err
	}
	quota, err := num(AnnotationCPUQuota, -1, maxCPUs*maxCPUPeriod)
	if err != nil {
		return w, ok, err
	}
	if _, err := num(AnnotationCPUShares, 0, maxCPUShares); err != nil {
		return w, ok, err
	}
	mem, err := num(AnnotationMemory, -1, maxMemory)
	if err != nil {
		return w, ok, err
	}
	if quota > 0 {
		if period < minCPUPeriod {
			return w, ok, fmt.Errorf("sandbox annotation %s=%q with %s=%q: the period must be %d..%d when there is a quota",
				AnnotationCPUPeriod, ann[AnnotationCPUPeriod], AnnotationCPUQuota, ann[AnnotationCPUQuota], minCPUPeriod, maxCPUPeriod)
		}
		w.CPUs = ceilDiv(uint64(quota), uint64(period))
		if w.CPUs > maxCPUs {
			return w, ok, fmt.Errorf("sandbox annotation %s=%q over %s=%q asks for %d CPUs, more than %d",
				AnnotationCPUQuota, ann[AnnotationCPUQuota], AnnotationCPUPeriod, ann[AnnotationCPUPeriod], w.CPUs, maxCPUs)
		}
	}
	if mem > 0 {
		w.MemoryMiB = ceilDiv(uint64(mem), 1<<20)
	}
	return w, ok, nil
}

// ContainerWorkload is what a container's linux.resources ask for: its
// CFS quota over its period and its memory limit. Values that mean "no
// limit" (absent, 0, -1) or that cannot be a limit ask nothing.
func ContainerWorkload(spec *specs.Spec) Workload {
	if spec == nil || spec.Linux == nil {
		return Workload{}
	}
	return ResourcesWorkload(spec.Linux.Resources)
}

// ResourcesWorkload is what linux.resources ask for (see ContainerWorkload).
func ResourcesWorkload(res *specs.LinuxResources) Workload {
	var w Workload
	if res == nil {
		return w
	}
	if c := res.CPU; c != nil && c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
		w.CPUs = ceilDiv(uint64(*c.Quota), *c.Period)
	}
	if m := res.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		w.MemoryMiB = ceilDiv(uint64(*m.Limit), 1<<20)
	}
	return w
}

// ceilDiv is ⌈a/b⌉ for b > 0, without overflow.
func ceilDiv(a, b uint64) uint64 {
	q := a / b
	if a%b != 0 {
		q++
	}
	return q
}
