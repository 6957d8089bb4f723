package bench

import (
	"fmt"
	"time"
)

// A phase of a vmpod cold start.
type phase struct {
	name string
	// what happens in it, for the report.
	what string
}

// coldStartPhases are the phases of `ctr run --rm` under vmpod, in order.
// The first starts when ctr is run, the last ends when ctr returns. They
// come from the shim's timing lines, which it logs at info level (no debug
// log needed), and containerd's TaskExit event.
var coldStartPhases = []phase{
	{"shim start", "ctr, containerd's container and snapshot, the shim binary, its configuration and the pod's network, up to the VM's start"},
	{"VM start", "virtiofsd, the vsock backend, QEMU's process up to QMP (`vm started` vmm_start)"},
	{"guest boot", "firmware, kernel and initrd up to the agent accepting a vsock connection (`vm started` guest_boot)"},
	{"agent ready", "from that connection to the agent's first answer (`vm started` agent_ready)"},
	{"container created", "CreateSandbox, rootfs mount, CreateContainer, up to the shim's `container created`"},
	{"process exited", "StartProcess, `true` runs and exits, up to TaskExit"},
	{"teardown", "TaskDelete, VM stop, shim exit, snapshot removal, up to ctr's return"},
}

// mark is a log line that ends a phase.
type mark struct {
	desc  string // for a report on what is missing
	match func(e logEntry) bool
}

func sandboxOf(id string) func(e logEntry) bool {
	return func(e logEntry) bool { return e.fields["sandbox"] == id || e.fields["vm"] == id }
}

// vmStartedMark is the shim's `vm started` line, at info level, with the
// durations of the VM's phases.
func vmStartedMark(id string) mark {
	sandbox := sandboxOf(id)
	return mark{`msg="vm started" sandbox=` + id + ` vmm_start=… guest_boot=… agent_ready=…`, func(e logEntry) bool {
		return e.msg == "vm started" && sandbox(e)
	}}
}

// laterMarks end the phases after the VM's, in order.
func laterMarks(id string) []mark {
	sandbox := sandboxOf(id)
	return []mark{
		{`msg="container created" sandbox=` + id, func(e logEntry) bool { return e.msg == "container created" && sandbox(e) }},
		{`msg="event forwarded" topic=/tasks/exit`, func(e logEntry) bool {
			return e.msg == "event forwarded" && e.fields["topic"] == "/tasks/exit"
		}},
	}
}

// vmPhases reads the VM's phase durations from a `vm started` line.
func vmPhases(e logEntry) (vmm, boot, ready time.Duration, err error) {
	get := func(k string) (time.Duration, error) {
		d, err := time.ParseDuration(e.fields[k])
		if err != nil || d < 0 {
			return 0, fmt.Errorf("vm started: %s=%q is not a duration", k, e.fields[k])
		}
		return d, nil
	}
	if vmm, err = get("vmm_start"); err != nil {
		return
	}
	if boot, err = get("guest_boot"); err != nil {
		return
	}
	ready, err = get("agent_ready")
	return
}

// splitPhases divides [start, end] with the shim's timing lines found in
// entries. It returns the duration of each of coldStartPhases, and the
// marks it could not find; with a mark missing, the phases around it are
// not measured (absent from the map).
func splitPhases(entries []logEntry, id string, start, end time.Time) (map[string]time.Duration, []string) {
	within := func(e logEntry) bool { return !e.time.Before(start) && !e.time.After(end) }
	var missing []string
	// at holds the bounds of the phases: start, the VM's start, the end
	// of its three phases, then the later marks, then end.
	at := []time.Time{start}
	vm := vmStartedMark(id)
	vmAt := -1
	for i, e := range entries {
		if within(e) && vm.match(e) {
			vmAt = i
			break
		}
	}
	if vmAt < 0 {
		missing = append(missing, vm.desc)
		at = append(at, time.Time{}, time.Time{}, time.Time{}, time.Time{})
	} else if vmm, boot, ready, err := vmPhases(entries[vmAt]); err != nil {
		missing = append(missing, vm.desc+" ("+err.Error()+")")
		at = append(at, time.Time{}, time.Time{}, time.Time{}, time.Time{})
		vmAt = -1
	} else {
		// The line is logged as the agent answered: count back from it.
		t := entries[vmAt].time
		at = append(at, t.Add(-(vmm + boot + ready)), t.Add(-(boot + ready)), t.Add(-ready), t)
	}
	i := max(vmAt, 0)
	for _, m := range laterMarks(id) {
		found := false
		for ; i < len(entries); i++ {
			if within(entries[i]) && m.match(entries[i]) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, m.desc)
			at = append(at, time.Time{})
			i = max(vmAt, 0) // later marks may still be found after an earlier miss
			continue
		}
		at = append(at, entries[i].time)
	}
	at = append(at, end)
	out := map[string]time.Duration{}
	for k, p := range coldStartPhases {
		from, to := at[k], at[k+1]
		if from.IsZero() || to.IsZero() || to.Before(from) {
			continue
		}
		out[p.name] = to.Sub(from)
	}
	return out, missing
}
