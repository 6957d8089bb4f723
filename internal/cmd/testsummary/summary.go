package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/vmpod/vmpod/internal/require"
)

// event is one line of `go test -json` (cmd/test2json's TestEvent).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	Elapsed     float64
	ImportPath  string // build-output, build-fail (Go 1.24 and later)
	FailedBuild string // on a package's fail: the build that failed
}

// key names a test: its package and full name ("" for the package).
type key struct{ pkg, test string }

// result is a finished test.
type result struct {
	key
	reason string // why it was skipped, or "" when it did not say
}

// summary follows a `go test -json` stream: it prints a compact progress
// (a line per package, the output of what failed) and counts the results.
type summary struct {
	out     io.Writer
	verbose bool   // echo every output line
	module  string // import path prefix dropped from package names
	allow   require.AllowList

	output   map[key][]string // output of tests (and packages) still running
	running  map[string][]string
	passed   int
	failed   []result
	skipped  []result
	badLines int
}

func newSummary(out io.Writer, module string, allow require.AllowList, verbose bool) *summary {
	return &summary{out: out, module: module, allow: allow, verbose: verbose, output: map[key][]string{}, running: map[string][]string{}}
}

// line takes one line of the stream. A line that is not an event (go
// test's own messages) is shown as it is.
func (s *summary) line(b []byte) {
	var ev event
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &ev) != nil {
		s.badLines++
		fmt.Fprintf(s.out, "%s\n", b)
		return
	}
	s.event(ev)
}

func (s *summary) event(ev event) {
	pkg := s.short(ev.Package)
	k := key{pkg, ev.Test}
	switch ev.Action {
	case "build-output":
		fmt.Fprint(s.out, ev.Output)
	case "build-fail":
		// The package's own "fail" event follows, with FailedBuild.
	case "run":
		if ev.Test == "" {
			return
		}
		s.running[pkg] = append(s.running[pkg], ev.Test)
	case "output":
		if s.verbose {
			fmt.Fprint(s.out, ev.Output)
		}
		s.output[k] = append(s.output[k], ev.Output)
	case "pass", "fail", "skip":
		if ev.Test == "" {
			s.packageDone(pkg, ev)
			return
		}
		s.running[pkg] = slices.DeleteFunc(s.running[pkg], func(t string) bool { return t == ev.Test })
		out := s.output[k]
		delete(s.output, k)
		switch ev.Action {
		case "pass":
			s.passed++
		case "fail":
			s.failed = append(s.failed, result{key: k})
			if !s.verbose {
				fmt.Fprint(s.out, strings.Join(out, ""))
			}
		case "skip":
			s.skipped = append(s.skipped, result{key: k, reason: skipReason(out)})
		}
	}
}

// packageDone prints the package's line; a package that failed with no
// failed test (a panic, a timeout, TestMain, a build error) counts as a
// failure of its own, and so does each test it left running.
func (s *summary) packageDone(pkg string, ev event) {
	out := s.output[key{pkg, ""}]
	delete(s.output, key{pkg, ""})
	switch ev.Action {
	case "pass":
		fmt.Fprintf(s.out, "ok   %s %.1fs\n", pkg, ev.Elapsed)
	case "skip":
		// no test files
	case "fail":
		for _, t := range s.running[pkg] {
			k := key{pkg, t}
			if !s.verbose {
				fmt.Fprint(s.out, strings.Join(s.output[k], ""))
			}
			delete(s.output, k)
			s.failed = append(s.failed, result{key: k, reason: "did not finish"})
		}
		if !slices.ContainsFunc(s.failed, func(r result) bool { return r.pkg == pkg }) {
			reason := "package failed"
			if ev.FailedBuild != "" {
				reason = "build failed"
			}
			s.failed = append(s.failed, result{key: key{pkg, ""}, reason: reason})
		}
		if !s.verbose {
			fmt.Fprint(s.out, strings.Join(out, ""))
		}
		fmt.Fprintf(s.out, "FAIL %s %.1fs\n", pkg, ev.Elapsed)
	}
	delete(s.running, pkg)
}

func (s *summary) short(pkg string) string {
	if pkg == s.module {
		return "."
	}
	if s.module != "" {
		if rest, ok := strings.CutPrefix(pkg, s.module+"/"); ok {
			return rest
		}
	}
	return pkg
}

// skipReason is what a skipped test logged, without go test's own
// "=== RUN" and "--- SKIP" lines and without the file:line prefix.
func skipReason(out []string) string {
	var parts []string
	for _, o := range out {
		l := strings.TrimSpace(o)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- ") {
			continue
		}
		if i := strings.Index(l, ".go:"); i > 0 && !strings.Contains(l[:i], " ") {
			if j := strings.Index(l[i:], ": "); j > 0 {
				l = l[i+j+2:]
			}
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, " ")
}

// unallowed is the skips the allow-list does not list.
func (s *summary) unallowed() []result {
	var bad []result
	for _, r := range s.skipped {
		if _, ok := s.allow.Allows(r.pkg, r.test); !ok {
			bad = append(bad, r)
		}
	}
	return bad
}

// report prints every skip with its reason, every failure, and the closing
// line "N passed, N failed, N skipped" (CI's runner reads that form). It
// returns whether the run is good: nothing failed and, when strict, every
// skip is allowed.
func (s *summary) report(strict bool, allowName string) bool {
	w := s.out
	// Tests still running when the stream ended: go test died.
	for _, pkg := range slices.Sorted(maps.Keys(s.running)) {
		for _, t := range s.running[pkg] {
			s.failed = append(s.failed, result{key: key{pkg, t}, reason: "did not finish"})
		}
	}
	s.running = map[string][]string{}
	bad := s.unallowed()
	if len(s.skipped) > 0 {
		fmt.Fprintf(w, "\nskipped (%d):\n", len(s.skipped))
		for _, r := range s.skipped {
			note := ""
			if why, ok := s.allow.Allows(r.pkg, r.test); ok {
				note = " [allowed: " + why + "]"
			} else if strict {
				note = " [NOT ALLOWED]"
			}
			reason := r.reason
			if reason == "" {
				reason = "(no reason given)"
			}
			fmt.Fprintf(w, "  %s %s: %s%s\n", r.pkg, r.test, reason, note)
		}
	}
	if len(s.failed) > 0 {
		fmt.Fprintf(w, "\nfailed (%d):\n", len(s.failed))
		for _, r := range s.failed {
			name := r.test
			if name == "" {
				name = "(package)"
			}
			if r.reason != "" {
				name += ": " + r.reason
			}
			fmt.Fprintf(w, "  %s %s\n", r.pkg, name)
		}
	}
	ok := len(s.failed) == 0
	if strict && len(bad) > 0 {
		fmt.Fprintf(w, "\n%d skips not in %s: %s=1 requires every requirement\n", len(bad), allowName, require.Env)
		ok = false
	}
	if s.passed+len(s.failed)+len(s.skipped) == 0 {
		fmt.Fprintln(w, "\nno test ran")
		ok = false
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", s.passed, len(s.failed), len(s.skipped))
	return ok
}
