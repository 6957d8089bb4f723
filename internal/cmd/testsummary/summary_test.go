package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/internal/require"
)

const mod = "github.com/vmpod/vmpod"

// stream renders events as go test -json would print them.
func stream(t *testing.T, evs ...event) []string {
	t.Helper()
	var lines []string
	for _, ev := range evs {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	return lines
}

func summarise(t *testing.T, allow require.AllowList, strict bool, lines []string) (string, bool) {
	t.Helper()
	var out bytes.Buffer
	s := newSummary(&out, mod, allow, false)
	for _, l := range lines {
		s.line([]byte(l))
	}
	good := s.report(strict, ".ci/allowed-skips")
	return out.String(), good
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func skipped(pkg, test, reason string) []event {
	return []event{
		{Action: "run", Package: pkg, Test: test},
		{Action: "output", Package: pkg, Test: test, Output: "=== RUN   " + test + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "    x_test.go:12: " + reason + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "--- SKIP: " + test + " (0.00s)\n"},
		{Action: "skip", Package: pkg, Test: test},
	}
}

func passed(pkg, test string) []event {
	return []event{{Action: "run", Package: pkg, Test: test}, {Action: "pass", Package: pkg, Test: test}}
}

func TestCountsAndSkipReasons(t *testing.T) {
	var evs []event
	evs = append(evs, passed(mod+"/vsock", "TestA")...)
	evs = append(evs, passed(mod+"/vsock", "TestA/sub")...)
	evs = append(evs, skipped(mod+"/vsock", "TestB", "needs root")...)
	evs = append(evs, event{Action: "pass", Package: mod + "/vsock", Elapsed: 1.5})
	evs = append(evs, event{Action: "skip", Package: mod + "/proto"})
	out, good := summarise(t, nil, false, stream(t, evs...))
	if !good {
		t.Errorf("a run with skips, not strict, is not good:\n%s", out)
	}
	if got := lastLine(out); got != "2 passed, 0 failed, 1 skipped" {
		t.Errorf("closing line %q", got)
	}
	if !strings.Contains(out, "  vsock TestB: needs root\n") {
		t.Errorf("the skip and its reason are not listed:\n%s", out)
	}
	if !strings.Contains(out, "ok   vsock 1.5s\n") {
		t.Errorf("no progress line for the package:\n%s", out)
	}
}

func TestStrictFailsOnSkipNotAllowed(t *testing.T) {
	allow := require.AllowList{{Package: "vsock", Test: "TestB", Reason: "no vhost-vsock here"}}
	evs := append(skipped(mod+"/vsock", "TestB", "x"), skipped(mod+"/vm", "TestC", "no qemu")...)
	out, good := summarise(t, allow, true, stream(t, evs...))
	if good {
		t.Errorf("strict run with a skip not on the allow-list is good:\n%s", out)
	}
	if !strings.Contains(out, "vm TestC: no qemu [NOT ALLOWED]") || !strings.Contains(out, "vsock TestB: x [allowed: no vhost-vsock here]") {
		t.Errorf("skips not marked:\n%s", out)
	}
	if got := lastLine(out); got != "0 passed, 0 failed, 2 skipped" {
		t.Errorf("closing line %q", got)
	}
	// Only the allowed one: good.
	out, good = summarise(t, allow, true, stream(t, skipped(mod+"/vsock", "TestB/sub", "x")...))
	if !good {
		t.Errorf("an allowed skip (a subtest of a listed test) failed the run:\n%s", out)
	}
}

func TestFailureOutputAndPackageFailures(t *testing.T) {
	pkg := mod + "/shim"
	evs := []event{
		{Action: "run", Package: pkg, Test: "TestBad"},
		{Action: "output", Package: pkg, Test: "TestBad", Output: "    shim_test.go:9: boom\n"},
		{Action: "fail", Package: pkg, Test: "TestBad"},
		{Action: "run", Package: pkg, Test: "TestHung"},
		{Action: "output", Package: pkg, Test: "TestHung", Output: "panic: test timed out\n"},
		{Action: "fail", Package: pkg, Elapsed: 3},
		// A package that fails with no test failing (TestMain, build).
		{Action: "fail", Package: mod + "/vm"},
		{Action: "build-output", ImportPath: mod + "/agent [" + mod + "/agent.test]", Output: "agent/x_test.go:3:28: undefined: undefined\n"},
		{Action: "build-fail", ImportPath: mod + "/agent [" + mod + "/agent.test]"},
		{Action: "output", Package: mod + "/agent", Output: "FAIL\tgithub.com/vmpod/vmpod/agent [build failed]\n"},
		{Action: "fail", Package: mod + "/agent", FailedBuild: mod + "/agent [" + mod + "/agent.test]"},
	}
	lines := append(stream(t, evs...), "a line that is not JSON")
	out, good := summarise(t, nil, false, lines)
	if good {
		t.Errorf("a failed run is good:\n%s", out)
	}
	for _, want := range []string{"shim_test.go:9: boom", "panic: test timed out", "FAIL shim 3.0s", "  shim TestBad\n", "  shim TestHung: did not finish", "  vm (package): package failed", "undefined: undefined", "  agent (package): build failed", "a line that is not JSON\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := lastLine(out); got != "0 passed, 4 failed, 0 skipped" {
		t.Errorf("closing line %q", got)
	}
}

func TestStreamEndingMidPackageFails(t *testing.T) {
	out, good := summarise(t, nil, false, stream(t, append(passed(mod+"/vm", "TestA"), event{Action: "run", Package: mod + "/vm", Test: "TestB"})...))
	if good || !strings.Contains(out, "vm TestB: did not finish") {
		t.Errorf("a test left running when the stream ended is not a failure:\n%s", out)
	}
}

func TestNoTestsIsNotGood(t *testing.T) {
	if out, good := summarise(t, nil, false, nil); good {
		t.Errorf("an empty run is good:\n%s", out)
	}
}

func TestSkipReason(t *testing.T) {
	for _, tc := range []struct {
		out  []string
		want string
	}{
		{[]string{"=== RUN   TestX\n", "    a_test.go:3: needs root\n", "--- SKIP: TestX (0.00s)\n"}, "needs root"},
		{[]string{"=== RUN   TestX\n", "--- SKIP: TestX (0.00s)\n", "    a_test.go:3: line one\n", "    line two\n"}, "line one line two"},
		{[]string{"--- SKIP: TestX (0.00s)\n"}, ""},
	} {
		if got := skipReason(tc.out); got != tc.want {
			t.Errorf("skipReason(%q) = %q, want %q", tc.out, got, tc.want)
		}
	}
}
