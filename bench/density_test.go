package bench

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkDensity starts -density idle containers at once, each in its own
// VM, and measures the time until all run and their total host PSS;
// against as many runc containers started at once. -runs rounds.
func BenchmarkDensity(b *testing.B) {
	e := newEnv(b)
	var tV, tR, pssV, pssR samples
	for i := 0; i < *runsFlag; i++ {
		d, pss := densityRound(b, e, kata, fmt.Sprintf("dense%d-", i))
		tV.add(d.Seconds())
		pssV.add(pss)
		d, pss = densityRound(b, e, runc, fmt.Sprintf("dense-runc%d-", i))
		tR.add(d.Seconds())
		pssR.add(pss)
	}
	name := fmt.Sprintf("%d idle containers started at once", *densityN)
	results.add(row{section: "density", name: name + ", time to all running", unit: seconds, value: tV.summary(), base: "runc", baseVal: tR.summary()})
	results.add(row{section: "density", name: name + ", total host PSS", unit: mib, value: pssV.summary(), base: "runc", baseVal: pssR.summary()})
	b.ReportMetric(tV.summary().median, "all-running-s")
	b.ReportMetric(pssV.summary().median, "total-PSS-MiB")
	b.ReportMetric(0, "ns/op")
}

// densityRound starts the containers in parallel, waits until every ctr
// run -d returned (each returns once its task runs), reads the total PSS
// of their pods after settling, and removes them.
func densityRound(b *testing.B, e *env, runtime, prefix string) (time.Duration, float64) {
	ids := make([]string, *densityN)
	errs := make([]error, *densityN)
	var wg sync.WaitGroup
	start := time.Now()
	for k := range ids {
		ids[k] = fmt.Sprintf("%s%d", prefix, k)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = e.startIdle(runtime, ids[k])
		}()
	}
	wg.Wait()
	d := time.Since(start)
	defer func() {
		for k, id := range ids {
			if errs[k] != nil {
				e.discard(id)
			} else if err := e.remove(id); err != nil {
				b.Error(err)
			}
		}
	}()
	for k, err := range errs {
		if err != nil {
			b.Fatalf("%s: %v", ids[k], err)
		}
	}
	time.Sleep(settle)
	procs, err := listProcesses("/proc")
	if err != nil {
		b.Fatal(err)
	}
	var pss float64
	for _, id := range ids {
		ps := podProcesses(procs, e.c.Address, id)
		if len(ps) == 0 {
			b.Fatalf("no processes for container %s", id)
		}
		pss += totalPSS("/proc", ps)
	}
	return d, pss
}
