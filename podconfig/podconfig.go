// Package podconfig applies a pod's per-pod overrides of the
// configuration: Kata's io.katacontainers.config.hypervisor.* annotations,
// each allowed only when [hypervisor.qemu] enable_annotations lists it, so
// that pod specs written for Kata keep working where the operator allows
// what they ask.
//
// As in Kata (src/runtime/pkg/oci/utils.go), an enable_annotations entry
// is a regular expression matched against the name after the prefix,
// unanchored (Go's regexp.MatchString), and only the hypervisor prefix is
// gated. What differs: vmpod acts on four annotations (Supported); an
// allowed annotation vmpod has no use for, and any other io.katacontainers.*
// annotation (Kata's runtime and agent ones, which Kata does not gate
// either), is logged and ignored rather than acted on.
package podconfig

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/sizing"
)

// Prefixes of Kata's annotations.
const (
	KataPrefix       = "io.katacontainers."
	HypervisorPrefix = KataPrefix + "config.hypervisor."
)

// The annotations vmpod acts on (Kata's names).
const (
	DefaultVCPUs  = HypervisorPrefix + "default_vcpus"  // a number of vCPUs; a fraction rounds up, as in Kata
	DefaultMemory = HypervisorPrefix + "default_memory" // MiB
	KernelParams  = HypervisorPrefix + "kernel_params"  // space-separated, appended to the configured ones
	MachineType   = HypervisorPrefix + "machine_type"   // one of config.MachineTypes
)

// Supported lists the annotations vmpod acts on.
var Supported = []string{DefaultVCPUs, DefaultMemory, KernelParams, MachineType}

// EnableKey names the configuration key that allows an annotation.
const EnableKey = "[hypervisor.qemu] enable_annotations"

// Apply returns a copy of cfg with the overrides that the pod's
// annotations ann ask for. An io.katacontainers.config.hypervisor.*
// annotation that enable_annotations does not allow is an error naming it
// and the key (and file) that would allow it; a malformed or out-of-range
// value is an error naming the value. The VM's size from these new
// defaults is still capped by sizing.Limits.
func Apply(ctx context.Context, cfg *config.Config, ann map[string]string) (*config.Config, error) {
	out := *cfg
	q := &out.Hypervisor.QEMU
	q.KernelParams = slices.Clone(q.KernelParams)
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, KataPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys) // the first error is the same every time
	for _, key := range keys {
		if !strings.HasPrefix(key, HypervisorPrefix) {
			log.G(ctx).WithField("annotation", key).Warn("ignoring a Kata annotation vmpod does not support")
			continue
		}
		name := strings.TrimPrefix(key, HypervisorPrefix)
		if !Allowed(cfg.Hypervisor.QEMU.EnableAnnotations, name) {
			return nil, fmt.Errorf("pod annotation %s is not enabled: %s in %s must list a pattern matching %q",
				key, EnableKey, cfg.Source, name)
		}
		if err := apply(ctx, q, key, ann[key]); err != nil {
			return nil, err
		}
	}
	return &out, nil
}

// Allowed reports whether the enable_annotations entries allow name (the
// annotation after HypervisorPrefix): whether one of them, as a regular
// expression, matches it anywhere, as Kata's checkAnnotationNameIsValid.
// The entries were checked to compile when the configuration was loaded.
func Allowed(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, err := regexp.MatchString(p, name); err == nil && ok {
			return true
		}
	}
	return false
}

// apply sets one allowed annotation's value in q.
func apply(ctx context.Context, q *config.QEMU, key, val string) error {
	limits := sizing.Limits(*q)
	switch key {
	case DefaultVCPUs:
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("pod annotation %s=%q: not a number of vCPUs", key, val)
		}
		n := math.Ceil(f)
		if n < 1 || n > float64(limits.VCPUs) {
			return fmt.Errorf("pod annotation %s=%q: outside 1..%d (the host's CPUs and max_vcpus)", key, val, limits.VCPUs)
		}
		q.DefaultVCPUs = uint32(n)
	case DefaultMemory:
		n, err := strconv.ParseUint(strings.TrimSpace(val), 10, 32)
		if err != nil {
			return fmt.Errorf("pod annotation %s=%q: not a whole number of MiB", key, val)
		}
		if n < config.MinMemoryMiB || n > uint64(limits.MemoryMiB) {
			return fmt.Errorf("pod annotation %s=%q: outside %d..%d MiB", key, val, config.MinMemoryMiB, limits.MemoryMiB)
		}
		q.DefaultMemory = uint32(n)
	case KernelParams:
		if strings.ContainsRune(val, 0) {
			return fmt.Errorf("pod annotation %s=%q: contains a NUL", key, val)
		}
		q.KernelParams = append(q.KernelParams, strings.Fields(val)...)
	case MachineType:
		if !slices.Contains(config.MachineTypes, val) {
			return fmt.Errorf("pod annotation %s=%q: not one of %s", key, val, strings.Join(config.MachineTypes, ", "))
		}
		q.MachineType = val
	default:
		// Allowed, but nothing vmpod can do: Kata would tune its VM;
		// the pod runs without that tuning.
		log.G(ctx).WithField("annotation", key).Warn("ignoring an enabled Kata annotation vmpod does not support")
	}
	return nil
}
