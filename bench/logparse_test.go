package bench

import (
	"strings"
	"testing"
	"time"
)

// Lines as containerd 1.6 writes them, a shim line among them, and junk a
// child wrote to containerd's stderr without a newline.
const sampleLog = `time="2026-11-26T23:41:16.089706643Z" level=debug msg="stat snapshot" key="sha256:4e"
time="2026-11-26T23:41:16.432487730Z" level=debug msg="starting signal loop" namespace=vmpod-test path=/tmp/ctd/state/io.containerd.runtime.v2.task/vmpod-test/x1 pid=22628 runtime=io.containerd.kata.v2
time="2026-11-26T23:41:16.468746385Z" level=debug msg="starting qemu" args="[-name vmpod-x1 -append \"console=ttyS0 quiet\"]" runtime=io.containerd.kata.v2 sandbox=x1 vm=x1
time="2026-11-26T23:41:32.822656945Z" level=info msg="vm started" agent_ready=322.430641ms duration=16.390168214s guest_boot=16.031479919s runtime=io.containerd.kata.v2 sandbox=x1 vm=x1 vmm_start=36.257654ms
time="2026-11-26T23:41:35.725978191Z" level=info msg="container created" duration=19.2s id=x1 runtime=io.containerd.kata.v2 sandbox=x1 started_sandbox=true
time="2026-11-26T23:41:35.726Z" level=debug msg="event forwarded" ns=vmpod-test topic=/tasks/create type=containerd.events.TaskCreate
time="2026-11-26T23:41:35.912260234Z" level=debug msg="event forwarded" ns=vmpod-test topic=/tasks/start type=containerd.events.TaskStart
not a log line
io.containerd.kata.v2: stop sandbox: no such file or directorytime="2026-11-26T23:41:36.152853157Z" level=debug msg="event forwarded" ns=vmpod-test topic=/tasks/exit type=containerd.events.TaskExit
time="2026-11-26T23:41:36.30Z" level=warning msg="cleanup warnings time=\"2026-01-01T00:00:00Z\" level=info" id=x1
`

func TestParseLog(t *testing.T) {
	es, err := parseLog(strings.NewReader(sampleLog))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 9 {
		t.Fatalf("parsed %d entries, want 9: %+v", len(es), es)
	}
	if got := es[2].fields["args"]; got != `[-name vmpod-x1 -append "console=ttyS0 quiet"]` {
		t.Errorf("quoted value with escapes: %q", got)
	}
	if es[7].msg != "event forwarded" || es[7].fields["topic"] != "/tasks/exit" {
		t.Errorf("line after junk: %+v", es[7])
	}
	if want := time.Date(2026, 11, 26, 23, 41, 36, 300000000, time.UTC); !es[8].time.Equal(want) {
		t.Errorf("time %v, want the outer %v (not the one quoted in msg)", es[8].time, want)
	}
}

func TestSplitPhases(t *testing.T) {
	es, err := parseLog(strings.NewReader(sampleLog))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 26, 23, 41, 16, 0, time.UTC)
	end := time.Date(2026, 11, 26, 23, 41, 37, 0, time.UTC)
	got, missing := splitPhases(es, "x1", start, end)
	if len(missing) != 0 {
		t.Errorf("missing marks %v", missing)
	}
	// The VM's phases come from the fields of "vm started", counted back
	// from its time; the rest from the lines' times.
	want := map[string]string{
		"shim start": "432.488731ms", "VM start": "36.257654ms", "guest boot": "16.031479919s", "agent ready": "322.430641ms",
		"container created": "2.903321246s", "process exited": "426.874966ms", "teardown": "847.146843ms",
	}
	var sum time.Duration
	for name, w := range want {
		if got[name].String() != w {
			t.Errorf("%s: %v, want %s", name, got[name], w)
		}
		sum += got[name]
	}
	if sum != end.Sub(start) {
		t.Errorf("phases add up to %v, want %v", sum, end.Sub(start))
	}

	// Another container's lines, or none: the phases around a missing mark
	// are not measured, the others are.
	got, missing = splitPhases(es, "x2", start, end)
	if len(missing) != 2 {
		t.Errorf("missing %v, want the two marks of x2", missing)
	}
	if _, ok := got["shim start"]; ok {
		t.Error("shim start measured without its mark")
	}
	if _, ok := got["process exited"]; ok {
		t.Error("process exited measured without x2's container created")
	}
	if got["teardown"] <= 0 {
		t.Error("teardown not measured from the exit event")
	}
}

func FuzzParseLogLine(f *testing.F) {
	for _, l := range strings.Split(sampleLog, "\n") {
		f.Add(l)
	}
	f.Add(`time="2026-11-26T23:41:16Z" msg="unterminated`)
	f.Add(`time="2026-11-26T23:41:16Z" a= b="\"" =x`)
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := parseLogLine(line)
		if ok && e.time.IsZero() {
			t.Errorf("entry without a time from %q", line)
		}
	})
}

// A "vm started" line whose durations do not parse measures none of the
// VM's phases, and says so.
func TestSplitPhasesBadVMLine(t *testing.T) {
	bad := strings.Replace(sampleLog, "guest_boot=16.031479919s", "guest_boot=soon", 1)
	es, err := parseLog(strings.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 26, 23, 41, 16, 0, time.UTC)
	got, missing := splitPhases(es, "x1", start, start.Add(time.Minute))
	if len(missing) != 1 || !strings.Contains(missing[0], "guest_boot") {
		t.Errorf("missing %v, want the vm started line, naming guest_boot", missing)
	}
	for _, p := range []string{"shim start", "VM start", "guest boot", "agent ready"} {
		if _, ok := got[p]; ok {
			t.Errorf("%s measured from a garbled line", p)
		}
	}
	if got["process exited"] <= 0 {
		t.Error("process exited not measured")
	}
}
