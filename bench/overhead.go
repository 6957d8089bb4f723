package bench

import (
	"fmt"
	"math"
)

// overhead is the RuntimeClass overhead.podFixed that deploy/runtimeclass.yaml
// should carry, from an idle pod measured in this run: what one pod's VM
// (shim, QEMU, virtiofsd) costs the node beyond its containers.
type overhead struct {
	memoryMiB  int     // the idle pod's highest PSS, rounded up to overheadMemStep
	milliCPU   int     // the idle pod's highest CPU use, rounded up to overheadCPUStep
	pssMiB     float64 // what memoryMiB came from
	cores      float64 // what milliCPU came from
	guestMiB   int     // the VM's memory when measured
	guestVCPUs int
}

// Rounding of the recommendation: a figure a reader can compare at a
// glance, never below what was measured.
const (
	overheadMemStep = 10 // MiB
	overheadCPUStep = 50 // millicores
)

// recommendOverhead rounds the idle pod's highest PSS (MiB) and CPU use
// (cores) up to the overhead to declare; nil when either was not measured.
func recommendOverhead(pss, cpu summary, guestMiB, guestVCPUs int) *overhead {
	if pss.n == 0 || cpu.n == 0 {
		return nil
	}
	roundUp := func(v float64, step int) int {
		return max(step, int(math.Ceil(v/float64(step)-1e-9))*step)
	}
	return &overhead{
		memoryMiB:  roundUp(pss.max, overheadMemStep),
		milliCPU:   roundUp(cpu.max*1000, overheadCPUStep),
		pssMiB:     pss.max,
		cores:      cpu.max,
		guestMiB:   guestMiB,
		guestVCPUs: guestVCPUs,
	}
}

// yaml is the overhead as deploy/runtimeclass.yaml writes it.
func (o *overhead) yaml() string {
	return fmt.Sprintf("overhead:\n  podFixed:\n    memory: \"%dMi\"\n    cpu: \"%dm\"\n", o.memoryMiB, o.milliCPU)
}

// basis says what the recommendation was measured on.
func (o *overhead) basis() string {
	return fmt.Sprintf("an idle pod of %d vCPU and %d MiB: PSS of shim + QEMU + virtiofsd at most %.1f MiB (rounded up to %d MiB), CPU use at most %.3f cores (rounded up to %dm)",
		o.guestVCPUs, o.guestMiB, o.pssMiB, overheadMemStep, o.cores, overheadCPUStep)
}
