package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/qemu"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testbin"
)

// bootTimeout bounds one guest boot; under TCG with the machine loaded a
// boot takes seconds, not minutes.
const bootTimeout = 3 * time.Minute

// BenchmarkColdStart runs `ctr run --rm <busybox> true` under vmpod and
// under runc, and boots the floor (the same kernel with an initrd whose
// /init powers off at once, same machine type and accel) and the stock
// floor (Debian's cloud kernel with its initrd loading the modules a guest
// needs, then powering off: a plain VM), -runs times each, interleaved so
// that load on the machine hits all alike.
// Each figure is one sample per run, whatever b.N is: the report wants
// the median with min and max, which ns/op would hide.
func BenchmarkColdStart(b *testing.B) {
	e := newEnv(b)
	floorCfg := vmConfig(b, e.kernel, floorInitrd(b, e.kernel, "floor.img", nil))
	bigCfg := floorCfg
	bigCfg.Initrd = agentSizedInitrd(b, e.kernel)
	stock := stockKernel(b)
	stockCfg := vmConfig(b, stock, floorInitrd(b, stock, "floor-stock.img", nil))
	stockCfg.KernelParams = append(slices.Clone(stockCfg.KernelParams), "vmpod_testinit=modules")
	leakcheck.Check(b, leakcheck.Options{Roots: []string{floorCfg.StateDir, stockCfg.StateDir}})
	var vmpod, floor, big, stockFloor, runcT samples
	phases := map[string]*samples{}
	missing := map[string]bool{}
	for i := 0; i < *runsFlag; i++ {
		id := fmt.Sprintf("cold%d", i)
		off := e.logOffset()
		start := time.Now()
		d, err := e.run(kata, id, "true")
		if err != nil {
			b.Fatal(err)
		}
		vmpod.add(d.Seconds())
		entries, err := e.logSince(off)
		if err != nil {
			b.Fatal(err)
		}
		split, miss := splitPhases(entries, id, start, start.Add(d))
		for name, pd := range split {
			if phases[name] == nil {
				phases[name] = &samples{}
			}
			phases[name].add(pd.Seconds())
		}
		for _, m := range miss {
			missing[m] = true
		}
		fd, err := bootFloor(floorCfg)
		if err != nil {
			b.Fatal(err)
		}
		floor.add(fd.Seconds())
		if fd, err = bootFloor(bigCfg); err != nil {
			b.Fatal(err)
		}
		big.add(fd.Seconds())
		if fd, err = bootFloor(stockCfg); err != nil {
			b.Fatal(err)
		}
		stockFloor.add(fd.Seconds())
		if d, err = e.run(runc, "runc-"+id, "true"); err != nil {
			b.Fatal(err)
		}
		runcT.add(d.Seconds())
	}
	b.ReportMetric(vmpod.summary().median, "vmpod-s")
	b.ReportMetric(floor.summary().median, "floor-s")
	b.ReportMetric(runcT.summary().median, "runc-s")
	b.ReportMetric(0, "ns/op")
	results.add(row{section: "cold start", name: "ctr run --rm true", unit: seconds, value: vmpod.summary(),
		base: "floor (bare QEMU boot to poweroff)", baseVal: floor.summary(), target: &target{onRatio: true, atMost: true, limit: 1.15}})
	results.add(row{section: "cold start", name: "ctr run --rm true vs stock", unit: seconds, value: vmpod.summary(),
		base: "stock floor (Debian's cloud kernel loading its modules, boot to poweroff)", baseVal: stockFloor.summary(),
		target: &target{onRatio: true, atMost: true, limit: 0.75}})
	results.add(row{section: "cold start", name: "ctr run --rm true", unit: seconds, value: vmpod.summary(),
		base: "floor with an agent-sized initrd", baseVal: big.summary()})
	results.add(row{section: "cold start", name: "ctr run --rm true", unit: seconds, value: vmpod.summary(),
		base: "runc", baseVal: runcT.summary()})
	for _, p := range coldStartPhases {
		s := phases[p.name]
		if s == nil {
			s = &samples{}
		}
		results.addPhase(row{section: "phase", name: p.name, what: p.what, unit: seconds, value: s.summary()})
	}
	if len(missing) > 0 {
		var ms []string
		for m := range missing {
			ms = append(ms, "`"+m+"`")
		}
		results.note("cold start phases: containerd's log lacked %s (is the shim's [runtime] debug on?)", strings.Join(ms, ", "))
	}
}

// agentSizedInitrd is the floor's initrd with the agent binary riding
// along as a plain file: it boots like the floor but is as large as the
// agent's initrd, which separates the cost of the initrd's size from the
// rest of vmpod's boot.
func agentSizedInitrd(b *testing.B, kernel string) string {
	agent := *agentPath
	if agent == "" {
		agent = testbin.Agent(b)
	}
	return floorInitrd(b, kernel, "floor-agent-sized.img", map[string]string{"/usr/bin/vmpod-agent": agent})
}

// bootFloor boots the floor guest and waits for it to power off; it
// returns the time from QEMU's start to its exit.
func bootFloor(cfg hypervisor.Config) (time.Duration, error) {
	q, err := qemu.New(cfg)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	defer q.Stop(context.Background())
	start := time.Now()
	if err := q.Start(ctx); err != nil {
		return 0, fmt.Errorf("floor: %w", err)
	}
	select {
	case <-q.Done():
	case <-ctx.Done():
		return 0, fmt.Errorf("floor guest did not power off within %s: %s", bootTimeout, q.ConsoleTail())
	}
	d := time.Since(start)
	if err := q.Err(); err != nil {
		return 0, fmt.Errorf("floor: %w", err)
	}
	return d, nil
}
