package qemu

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/hypervisor"
)

// Memory hot-plug is done with DIMMs (pc-dimm), each backed by a memory
// backend object of its own, shared like the boot RAM when vhost-user
// devices read guest memory. virtio-mem would take a single vhost-user
// region for all of it, and QEMU 7.2 accepts a virtio-mem-pci beside
// vhost-user devices (tried, with virtiofsd); but Debian's cloud kernel has
// virtio_mem as a module, which the initrd would have to carry and load
// before the first grow, and the guest driver then decides when the memory
// arrives. DIMMs use the guest kernel's built-in ACPI memory hot-plug and
// need nothing in the image; their cost is a vhost-user region each.
//
// Every DIMM is one more region in the vhost-user memory table, which holds
// vhostUserMaxRegions without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS (which
// vmpod's vsock backend does not offer; virtiofsd's allows 32). The boot
// RAM takes bootRegions of them. QEMU refuses a DIMM once a vhost-user
// device has no free slot, so DIMMs are sized to reach max memory with the
// slots there are (dimmMiB).
const (
	vhostUserMaxRegions = 8
	// memoryBlockMiB is the guest's memory block size (x86-64 Linux below
	// 64 GiB): memory is onlined by whole blocks, so DIMMs are sized in
	// them.
	memoryBlockMiB = 128
	// lowMemSplitMiB: q35 maps boot RAM of this size or more partly above
	// 4 GiB, one more region.
	lowMemSplitMiB = 0xb0000000 >> 20
)

// bootRegions is how many vhost-user memory regions the boot RAM of a q35
// guest takes: RAM below 4 GiB, and RAM above when there is some. Measured
// with QEMU 7.2 (the memory table vmpod's vsock backend receives): 1 region
// at 512 MiB, 2 at 3072 MiB; TestHotplug fills every slot.
func bootRegions(memMiB int) int {
	if memMiB >= lowMemSplitMiB {
		return 2
	}
	return 1
}

// dimmSlots is how many DIMMs a guest of memMiB boot RAM can take.
func dimmSlots(memMiB int) int { return vhostUserMaxRegions - bootRegions(memMiB) }

// dimmMiB sizes the next DIMM for a guest that needs need MiB more, with
// room MiB left below its maximum and slots DIMM slots free: at least an
// equal share of the room per free slot, so that the slots last up to the
// maximum whatever the later requests, in whole memory blocks, never more
// than the room. 0 when nothing can be added.
func dimmMiB(need, room, slots int) int {
	room -= room % memoryBlockMiB
	if need <= 0 || room <= 0 || slots <= 0 {
		return 0
	}
	share := (room + slots - 1) / slots
	size := roundUp(max(need, share), memoryBlockMiB)
	return min(size, room)
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// qmpExecutor runs one QMP command; *qmpClient in production.
type qmpExecutor interface {
	ExecuteArgs(ctx context.Context, cmd string, args any) (json.RawMessage, error)
}

// hotplug is a guest's hot-plug state.
type hotplug struct {
	mu     sync.Mutex // serialises Grow
	cur    hypervisor.Resources
	max    hypervisor.Resources
	slots  int    // DIMM slots left
	shared bool   // DIMMs are memfd with share=on, like the boot RAM
	nextID int    // numbers the ids of the devices and objects added
	vmID   string // for errors and logs
}

func newHotplug(cfg hypervisor.Config) *hotplug {
	h := &hotplug{vmID: cfg.ID, shared: sharedMemory(cfg)}
	h.cur = hypervisor.Resources{VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB}
	h.max = h.cur
	if hypervisor.HotplugSupport(cfg.Machine) != nil {
		return h
	}
	h.max.VCPUs = max(cfg.MaxVCPUs, cfg.VCPUs)
	// DIMMs come in whole blocks: the maximum is the boot size plus the
	// whole blocks that fit below the configured one.
	if room := cfg.MaxMemoryMiB - cfg.MemoryMiB; room >= memoryBlockMiB {
		h.max.MemoryMiB = cfg.MemoryMiB + room - room%memoryBlockMiB
		h.slots = dimmSlots(cfg.MemoryMiB)
	}
	return h
}

// sharedMemory: vhost-user devices read guest memory directly, so it must
// be a shareable memfd.
func sharedMemory(cfg hypervisor.Config) bool {
	return cfg.SharedFS != nil || (cfg.Vsock != nil && cfg.Vsock.VhostUserSocket != "")
}

func (h *hotplug) resources() (cur, max hypervisor.Resources) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur, h.max
}

// grow adds vCPUs, then memory, through q, up to want capped at h.max.
func (h *hotplug) grow(ctx context.Context, q qmpExecutor, want hypervisor.Resources) (hypervisor.Resources, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := min(want.VCPUs, h.max.VCPUs) - h.cur.VCPUs; n > 0 {
		if err := h.addVCPUs(ctx, q, n); err != nil {
			return h.cur, err
		}
	}
	if need := min(want.MemoryMiB, h.max.MemoryMiB) - h.cur.MemoryMiB; need > 0 {
		if err := h.addMemory(ctx, q, need); err != nil {
			return h.cur, err
		}
	}
	return h.cur, nil
}

// hotpluggableCPU is one entry of query-hotpluggable-cpus.
type hotpluggableCPU struct {
	Type    string           `json:"type"`
	Props   map[string]int64 `json:"props"`
	QOMPath string           `json:"qom-path"` // set when the slot is taken
}

// freeCPUSlots returns the empty CPU slots in topology order.
func freeCPUSlots(raw json.RawMessage) ([]hotpluggableCPU, error) {
	var all []hotpluggableCPU
	if err := json.Unmarshal(raw, &all); err != nil {
		return nil, fmt.Errorf("QMP query-hotpluggable-cpus: %w", err)
	}
	var free []hotpluggableCPU
	for _, c := range all {
		if c.QOMPath == "" && c.Type != "" {
			free = append(free, c)
		}
	}
	order := []string{"node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id"}
	slices.SortStableFunc(free, func(a, b hotpluggableCPU) int {
		for _, k := range order {
			if c := cmp.Compare(a.Props[k], b.Props[k]); c != 0 {
				return c
			}
		}
		return 0
	})
	return free, nil
}

// cpuDeviceArgs is device_add's arguments for a CPU in slot c.
func cpuDeviceArgs(c hotpluggableCPU, id string) map[string]any {
	args := map[string]any{"driver": c.Type, "id": id}
	for k, v := range c.Props {
		args[k] = v
	}
	return args
}

func (h *hotplug) addVCPUs(ctx context.Context, q qmpExecutor, n int) error {
	raw, err := q.ExecuteArgs(ctx, "query-hotpluggable-cpus", nil)
	if err != nil {
		return fmt.Errorf("qemu %s: add %d vCPUs: %w", h.vmID, n, err)
	}
	free, err := freeCPUSlots(raw)
	if err != nil {
		return fmt.Errorf("qemu %s: add %d vCPUs: %w", h.vmID, n, err)
	}
	if len(free) < n {
		return fmt.Errorf("qemu %s: add %d vCPUs: only %d CPU slots free", h.vmID, n, len(free))
	}
	for _, c := range free[:n] {
		h.nextID++
		id := fmt.Sprintf("vcpu%d", h.nextID)
		if _, err := q.ExecuteArgs(ctx, "device_add", cpuDeviceArgs(c, id)); err != nil {
			return fmt.Errorf("qemu %s: add vCPU %s: %w", h.vmID, id, err)
		}
		h.cur.VCPUs++
		log.G(ctx).WithFields(log.Fields{"vm": h.vmID, "id": id, "vcpus": h.cur.VCPUs}).Debug("vCPU hot-added")
	}
	return nil
}

// memoryBackendArgs is object-add's arguments for a DIMM's backend.
func memoryBackendArgs(id string, mib int, shared bool) map[string]any {
	if shared {
		return map[string]any{"qom-type": "memory-backend-memfd", "id": id, "size": uint64(mib) << 20, "share": true}
	}
	return map[string]any{"qom-type": "memory-backend-ram", "id": id, "size": uint64(mib) << 20}
}

// dimmArgs is device_add's arguments for a DIMM on backend memdev.
func dimmArgs(id, memdev string) map[string]any {
	return map[string]any{"driver": "pc-dimm", "id": id, "memdev": memdev}
}

func (h *hotplug) addMemory(ctx context.Context, q qmpExecutor, need int) error {
	room := h.max.MemoryMiB - h.cur.MemoryMiB
	size := dimmMiB(need, room, h.slots)
	if size == 0 {
		return fmt.Errorf("qemu %s: add %d MiB of memory: no DIMM slot left (%d MiB below the maximum of %d MiB; vhost-user devices take at most %d memory regions)",
			h.vmID, need, room, h.max.MemoryMiB, vhostUserMaxRegions)
	}
	h.nextID++
	obj, dev := fmt.Sprintf("dimm%d-mem", h.nextID), fmt.Sprintf("dimm%d", h.nextID)
	if _, err := q.ExecuteArgs(ctx, "object-add", memoryBackendArgs(obj, size, h.shared)); err != nil {
		return fmt.Errorf("qemu %s: add %d MiB of memory: backend %s: %w", h.vmID, size, obj, err)
	}
	if _, err := q.ExecuteArgs(ctx, "device_add", dimmArgs(dev, obj)); err != nil {
		// No DIMM uses the backend: remove it, so that nothing leaks.
		if _, derr := q.ExecuteArgs(context.WithoutCancel(ctx), "object-del", map[string]any{"id": obj}); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove backend %s: %w", obj, derr))
		}
		return fmt.Errorf("qemu %s: add %d MiB of memory: DIMM %s: %w", h.vmID, size, dev, err)
	}
	h.slots--
	h.cur.MemoryMiB += size
	log.G(ctx).WithFields(log.Fields{"vm": h.vmID, "id": dev, "size_mib": size, "memory_mib": h.cur.MemoryMiB, "slots_left": h.slots}).Debug("memory hot-added")
	return nil
}

var _ hypervisor.Hotplugger = (*QEMU)(nil)

// Resources is what the guest has now.
func (q *QEMU) Resources() hypervisor.Resources {
	cur, _ := q.hp.resources()
	return cur
}

// MaxResources is the most Grow can reach.
func (q *QEMU) MaxResources() hypervisor.Resources {
	_, m := q.hp.resources()
	return m
}

// Grow hot-adds vCPUs and DIMMs until the guest has at least want.
func (q *QEMU) Grow(ctx context.Context, want hypervisor.Resources) (hypervisor.Resources, error) {
	c, err := q.client()
	if err != nil {
		cur, _ := q.hp.resources()
		return cur, err
	}
	return q.hp.grow(ctx, c, want)
}
