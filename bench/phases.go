package bench

import (
	"fmt"
	"strings"
	"time"
)

// A phase of a vmpod cold start, bounded by two marks.
type phase struct {
	name string
	// what happens in it, for the report.
	what string
}

// coldStartPhases are the phases of `ctr run --rm` under vmpod, in order;
// their marks are found by findMarks. The first starts when ctr is run, the
// last ends when ctr returns.
var coldStartPhases = []phase{
	{"shim start", "ctr, containerd's container and snapshot, the shim binary up to its ttrpc server"},
	{"VM start", "virtiofsd, the vsock backend, QEMU's process"},
	{"guest boot", "kernel and initrd up to the agent's \"vmpod-agent serving\" console line"},
	{"agent ready", "the shim's vsock connection and the agent's first answer"},
	{"container created", "rootfs mount, CreateSandbox, CreateContainer, up to TaskCreate"},
	{"process exited", "StartProcess, `true` runs and exits, up to TaskExit"},
	{"teardown", "TaskDelete, VM stop, shim exit, snapshot removal, up to ctr's return"},
}

// mark is a log line that ends a phase.
type mark struct {
	desc  string // for a report on what is missing
	match func(e logEntry) bool
}

// coldStartMarks end the phases but the last, in order; all of them are at
// debug level, so the shim needs `[runtime] debug = true` and containerd
// `--log-level debug`.
func coldStartMarks(id string) []mark {
	kata := func(e logEntry) bool { return e.fields["runtime"] == "io.containerd.kata.v2" }
	sandbox := func(e logEntry) bool { return e.fields["sandbox"] == id || e.fields["vm"] == id }
	topic := func(t string) mark {
		return mark{fmt.Sprintf(`msg="event forwarded" topic=%s`, t), func(e logEntry) bool {
			return e.msg == "event forwarded" && e.fields["topic"] == t
		}}
	}
	return []mark{
		{`msg="starting signal loop" runtime=io.containerd.kata.v2 path=.../` + id, func(e logEntry) bool {
			return e.msg == "starting signal loop" && kata(e) && strings.HasSuffix(e.fields["path"], "/"+id)
		}},
		{`msg="starting qemu" sandbox=` + id, func(e logEntry) bool { return e.msg == "starting qemu" && sandbox(e) }},
		{`msg="...vmpod-agent serving..." console=true sandbox=` + id, func(e logEntry) bool {
			return e.fields["console"] == "true" && strings.Contains(e.msg, "vmpod-agent serving") && sandbox(e)
		}},
		{`msg="agent answered" sandbox=` + id, func(e logEntry) bool { return e.msg == "agent answered" && sandbox(e) }},
		topic("/tasks/create"),
		topic("/tasks/exit"),
	}
}

// splitPhases divides [start, end] at the marks found in order in
// entries. It returns the duration of each of coldStartPhases, and the
// marks it could not find; with a mark missing, the phases around it are
// not measured (absent from the map).
func splitPhases(entries []logEntry, id string, start, end time.Time) (map[string]time.Duration, []string) {
	marks := coldStartMarks(id)
	at := make([]time.Time, 0, len(marks)+2)
	at = append(at, start)
	var missing []string
	i := 0
	for _, m := range marks {
		found := false
		for ; i < len(entries); i++ {
			e := entries[i]
			if !e.time.Before(start) && !e.time.After(end) && m.match(e) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, m.desc)
			at = append(at, time.Time{})
			i = 0 // later marks may still be found after an earlier miss
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
