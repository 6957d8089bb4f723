package bench

import (
	"path/filepath"
	"strings"

	"github.com/vmpod/vmpod/internal/procmaps"
)

// QEMU's memory, by what it holds. The order is the report's.
const (
	partGuestRAM = "guest RAM (memfd)"
	partTCG      = "TCG translation cache"
	partKernel   = "guest kernel file"
	partInitrd   = "initrd file"
	partHeap     = "heap"
	partBinary   = "QEMU binary"
	partLibs     = "shared libraries"
	partAnon     = "other anonymous (thread stacks, allocator arenas)"
	partOther    = "other"
)

var qemuParts = []string{partGuestRAM, partTCG, partKernel, partInitrd, partHeap, partBinary, partLibs, partAnon, partOther}

// classifyQEMU sums a QEMU's mappings' PSS (MiB) by what they hold. The
// guest RAM is a memfd ("memfd:" in the path; DIMMs too); the TCG
// translation cache is QEMU's one anonymous mapping with write and execute
// both allowed; kernel and initrd are the files the VM was given.
func classifyQEMU(ms []procmaps.Mapping, binary, kernel, initrd string) map[string]float64 {
	out := make(map[string]float64, len(qemuParts))
	for _, m := range ms {
		var part string
		switch {
		case strings.HasPrefix(m.Path, "/memfd:"):
			part = partGuestRAM
		case m.Path == "" && strings.HasPrefix(m.Perms, "rwx"):
			part = partTCG
		case m.Path == kernel && kernel != "":
			part = partKernel
		case m.Path == initrd && initrd != "":
			part = partInitrd
		case m.Path == "[heap]":
			part = partHeap
		case m.Path == binary && binary != "":
			part = partBinary
		case strings.Contains(filepath.Base(m.Path), ".so"):
			part = partLibs
		case m.Path == "" || m.Path == "[stack]":
			part = partAnon
		default:
			part = partOther
		}
		out[part] += float64(m.PssKiB) / 1024
	}
	return out
}

// guestRAMMiB is the PSS of a process's memfd mappings: its share of the
// guest RAM (QEMU's, and the vhost-user backends' that map it too).
func guestRAMMiB(ms []procmaps.Mapping) float64 {
	var kib int64
	for _, m := range ms {
		if strings.HasPrefix(m.Path, "/memfd:") {
			kib += m.PssKiB
		}
	}
	return float64(kib) / 1024
}
