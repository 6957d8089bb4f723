package bench

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want summary
	}{
		{nil, summary{}},
		{[]float64{3}, summary{1, 3, 3, 3}},
		{[]float64{5, 1, 3}, summary{3, 3, 1, 5}},
		{[]float64{4, 1, 2, 10}, summary{4, 3, 1, 10}},
	} {
		if got := summarize(tc.in); got != tc.want {
			t.Errorf("summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestRowCells(t *testing.T) {
	cold := row{section: "cold start", name: "run", unit: seconds, value: summarize([]float64{3, 2.5, 4}),
		base: "floor", baseVal: summarize([]float64{2}), target: &target{onRatio: true, atMost: true, limit: 1.25}}
	c := cold.cells()
	if c[1] != "3.00 s (2.50 s–4.00 s)" || c[2] != "floor: 2.00 s" || c[3] != "1.50×" || c[4] != "≤ 1.25×" || c[5] != "**no**" {
		t.Errorf("cold start cells %q", c)
	}
	stdout := row{section: "stdout", name: "256 MiB", unit: mibPerSec, value: summarize([]float64{150}), target: &target{limit: 100}}
	if c := stdout.cells(); c[4] != "≥ 100.0 MiB/s" || c[5] != "yes" || c[3] != "—" {
		t.Errorf("stdout cells %q", c)
	}
	none := row{section: "memory", name: "agent", unit: mib, target: &target{atMost: true, limit: 12}}
	if c := none.cells(); c[1] != "not measured" || c[5] != "not measured" {
		t.Errorf("unmeasured cells %q", c)
	}
	exec := row{section: "exec", name: "true", unit: seconds, value: summarize([]float64{0.25})}
	if c := exec.cells(); c[1] != "250.0 ms" {
		t.Errorf("exec cells %q", c)
	}
}

func TestWriteMarkdown(t *testing.T) {
	r := &report{date: time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC), runs: 3, commit: "abc1234"}
	r.fact("CPU", "a|b")
	r.add(row{section: "exec", name: "true", unit: seconds, value: summarize([]float64{0.2})})
	r.addPhase(row{section: "phase", name: "shim start", what: "the shim starts", unit: seconds, value: summarize([]float64{0.1})})
	r.note("density: not measured")
	var b strings.Builder
	if err := r.writeMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"at commit abc1234 on 2026-11-27 01:00 UTC", "3 runs", `| CPU | a\|b |`, "| exec: true | 200.0 ms |", "| shim start | 100.0 ms | the shim starts |", "- density: not measured", "performance.md"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
	var txt strings.Builder
	if err := r.writeText(&txt); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(txt.String(), "exec: true") || strings.Contains(txt.String(), "**") {
		t.Errorf("text table:\n%s", txt.String())
	}
}

func TestFormatSummaryEqualEnds(t *testing.T) {
	if got := mib.formatSummary(summarize([]float64{281.91, 281.93})); got != "281.9 MiB" {
		t.Errorf("got %q: equal ends at the shown precision should show one value", got)
	}
}

func TestFormatSecondsPerMiB(t *testing.T) {
	if got := secondsPerMiB.format(0.02281); got != "22.81 ms/MiB" {
		t.Errorf("got %q, want 22.81 ms/MiB", got)
	}
}

func TestRecommendOverhead(t *testing.T) {
	for _, tc := range []struct {
		name            string
		pss, cpu        []float64
		wantMem, wantMC int
	}{
		{"rounds up", []float64{266.8, 266.7}, []float64{0.031, 0.042}, 270, 50},
		{"highest sample counts", []float64{250, 271}, []float64{0.02, 0.26}, 280, 300},
		{"exact steps stay", []float64{270}, []float64{0.1}, 270, 100},
		{"idle CPU of nothing is still a step", []float64{9}, []float64{0}, 10, 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := recommendOverhead(summarize(tc.pss), summarize(tc.cpu), 512, 1)
			if o == nil || o.memoryMiB != tc.wantMem || o.milliCPU != tc.wantMC {
				t.Fatalf("recommendOverhead = %+v, want %d MiB and %dm", o, tc.wantMem, tc.wantMC)
			}
			want := fmt.Sprintf("overhead:\n  podFixed:\n    memory: \"%dMi\"\n    cpu: \"%dm\"\n", tc.wantMem, tc.wantMC)
			if o.yaml() != want {
				t.Errorf("yaml %q, want %q", o.yaml(), want)
			}
		})
	}
	if o := recommendOverhead(summary{}, summarize([]float64{0.1}), 512, 1); o != nil {
		t.Errorf("no PSS measured, yet %+v", o)
	}
	r := &report{}
	r.setOverhead(recommendOverhead(summarize([]float64{266.8}), summarize([]float64{0.04}), 512, 1))
	var md, txt strings.Builder
	if err := r.writeMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := r.writeText(&txt); err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{md.String(), txt.String()} {
		for _, want := range []string{"memory: \"270Mi\"", "cpu: \"50m\"", "1 vCPU and 512 MiB", "266.8 MiB"} {
			if !strings.Contains(out, want) {
				t.Errorf("report lacks %q:\n%s", want, out)
			}
		}
	}
}
