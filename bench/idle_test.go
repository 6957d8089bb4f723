package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor/qemu"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/procmaps"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/vm"
)

// settle is how long a freshly started guest is left alone before its
// memory is read, so that boot-time allocations are counted once they
// stop growing.
const settle = 2 * time.Second

// BenchmarkRunningContainer measures, on one idle busybox `sleep`
// container per runtime, vmpod against runc: the memory of the pod's host
// processes, exec latency and stdout throughput.
func BenchmarkRunningContainer(b *testing.B) {
	e := newEnv(b)
	for _, c := range []struct{ runtime, id string }{{kata, "idle"}, {runc, "idle-runc"}} {
		if err := e.startIdle(c.runtime, c.id); err != nil {
			e.discard(c.id)
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := e.remove(c.id); err != nil {
				b.Error(err)
			}
		})
	}
	time.Sleep(settle)
	pss := measureIdleMemory(b, e)
	results.setOverhead(recommendOverhead(pss, measureIdleCPU(b, e, "idle"), *memoryMiB, *vcpus))
	var execV, execR samples
	for i := 0; i < *runsFlag; i++ {
		for _, m := range []struct {
			id string
			to *samples
		}{{"idle", &execV}, {"idle-runc", &execR}} {
			d, err := e.exec(m.id, fmt.Sprintf("true%d", i), "true")
			if err != nil {
				b.Fatal(err)
			}
			m.to.add(d.Seconds())
		}
	}
	results.add(row{section: "exec", name: "ctr task exec true", unit: seconds, value: execV.summary(), base: "runc", baseVal: execR.summary()})
	measureStdout(b, e)
	measureGiveBack(b, e)
	b.ReportMetric(execV.summary().median, "exec-s")
	b.ReportMetric(0, "ns/op")
}

// measureStdout streams -stdout-mib MiB out of each idle container -runs
// times with each stdout writer, and through the stream floor (a guest
// process writing into vsock, read straight from the backend),
// interleaved; it notes the CPU time the pod's shim and QEMU spent on
// each writer's streams.
//
// Two writers, because under emulation the writer's own CPU can hide the
// data path: busybox's `head -c` (the figure, kept comparable)
// copies one byte at a time through stdio in 4 KiB writes, which costs the
// guest's vCPU about 30 ms per MiB before a byte leaves the container;
// `dd` in 256 KiB blocks, like the floor's writer, costs almost nothing, so
// its row is the data path's rate and carries the targets.
func measureStdout(b *testing.B, e *env) {
	size := int64(*stdoutMiB) << 20
	floor := startStreamFloor(b, e.kernel)
	writers := []struct {
		name, what string
		w          writer
		targets    bool
	}{
		{"head", "busybox head -c: 4 KiB writes, a byte at a time", headWriter, false},
		{"dd", "dd bs=256k: 256 KiB writes, as the floor", ddWriter, true},
	}
	type meas struct {
		rateV, rateR samples
		cpuV, cpuR   [2]float64 // CPU seconds: shim, then QEMU and virtiofsd
	}
	ms := make([]meas, len(writers))
	var rateF, floorCPU, floorQEMU samples
	for i := 0; i < *runsFlag; i++ {
		for wi, w := range writers {
			m := &ms[wi]
			for _, p := range []struct {
				id   string
				to   *samples
				used *[2]float64
			}{{"idle", &m.rateV, &m.cpuV}, {"idle-runc", &m.rateR, &m.cpuR}} {
				var profiled func()
				if *shimProf != "" && i == 0 && wi == 0 && p.id == "idle" {
					profiled = profileShim(b, e, p.id, shimProfileSeconds)
				}
				used := cpuMeter(b, e, p.id)
				r, err := e.stream(p.id, fmt.Sprintf("%s%d", w.name, i), size, w.w)
				u := used()
				if profiled != nil {
					profiled()
				}
				if err != nil {
					b.Fatal(err)
				}
				p.to.add(r)
				p.used[0] += u[0]
				p.used[1] += u[1]
			}
		}
		r, err := floor.stream(size)
		if err != nil {
			b.Fatal(err)
		}
		rateF.add(r.rate)
		floorCPU.add(r.backendCPU / float64(*stdoutMiB))
		floorQEMU.add(r.qemuCPU / float64(*stdoutMiB))
	}
	mibs := float64(*stdoutMiB) * float64(*runsFlag)
	perMiB := func(v float64) summary { return summarize([]float64{v / mibs}) }
	for wi, w := range writers {
		m := &ms[wi]
		name := fmt.Sprintf("%d MiB through ctr, %s", *stdoutMiB, w.what)
		// The shim's CPU is the host's side of the data path whatever
		// the writer: its target stays on both.
		var vsRunc, vsFloor *target
		if w.targets {
			vsRunc, vsFloor = &target{onRatio: true, limit: 0.5}, &target{onRatio: true, limit: 0.6}
		}
		results.add(row{section: "stdout", name: name, unit: mibPerSec, value: m.rateV.summary(),
			base: "runc", baseVal: m.rateR.summary(), target: vsRunc})
		if w.targets {
			results.add(row{section: "stdout", name: name, unit: mibPerSec, value: m.rateV.summary(),
				base: "stream floor (a guest process writing into vsock in 256 KiB writes, read from the backend)", baseVal: rateF.summary(),
				target: vsFloor})
		}
		results.add(row{section: "stdout", name: name + ", CPU time of the shim per MiB", unit: secondsPerMiB,
			value: perMiB(m.cpuV[0]), base: "runc shim", baseVal: perMiB(m.cpuR[0]), target: &target{onRatio: true, atMost: true, limit: 2}})
		results.add(row{section: "stdout", name: name + ", CPU time of QEMU and virtiofsd per MiB", unit: secondsPerMiB, value: perMiB(m.cpuV[1]),
			base: "stream floor's QEMU", baseVal: floorQEMU.summary()})
		b.ReportMetric(m.rateV.summary().median, "stdout-"+w.name+"-MiB/s")
	}
	results.add(row{section: "stdout", name: "stream floor, CPU time of the vsock backend (and its reader) per MiB", unit: secondsPerMiB, value: floorCPU.summary()})
	if shim := podShim(b, e, "idle"); shim != 0 {
		if v, err := rssMiB("/proc", shim); err == nil {
			results.add(row{section: "memory", name: "shim RSS after the stdout runs", unit: mib, value: summarize([]float64{v})})
		}
	}
	b.ReportMetric(rateF.summary().median, "floor-MiB/s")
}

// shimProfileSeconds is how long -shim-profile profiles the shim.
const shimProfileSeconds = 5

// profileShim asks the pprof socket of pod id's shim for a CPU profile of
// the next seconds, and halfway for its goroutines; the function it
// returns waits for both, writes them to -shim-profile and notes in the
// report whether the vsock backend's goroutines were among them.
func profileShim(b *testing.B, e *env, id string, seconds int) func() {
	sock := filepath.Join(e.stateRoot, id, "pprof.sock")
	client := &http.Client{Timeout: time.Duration(seconds+30) * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	get := func(path, out string) error {
		resp, err := client.Get("http://shim" + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s on %s: %s %v", path, sock, resp.Status, err)
		}
		return os.WriteFile(out, body, 0o644)
	}
	done := make(chan error, 2)
	go func() { done <- get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), *shimProf) }()
	go func() {
		time.Sleep(time.Duration(seconds) * time.Second / 2)
		done <- get("/debug/pprof/goroutine?debug=1", *shimProf+".goroutines")
	}()
	return func() {
		defer client.CloseIdleConnections()
		for range 2 {
			if err := <-done; err != nil {
				b.Fatalf("shim profile: %v", err)
			}
		}
		g, err := os.ReadFile(*shimProf + ".goroutines")
		if err != nil {
			b.Fatal(err)
		}
		results.note("shim profile over the first vmpod stdout run: %s (CPU, %d s), %s.goroutines; the vsock backend's worker among the goroutines: %v",
			*shimProf, seconds, *shimProf, strings.Contains(string(g), "vsock/device.(*Device).run"))
	}
}

// giveBackMiB is what a container writes to /dev/shm (a tmpfs in the
// guest, 64 MiB by default) and deletes, for measureGiveBack.
const giveBackMiB = 60

// giveBackWait is how long measureGiveBack leaves the guest to report the
// freed memory (it reports free 2 MiB blocks about 2 s after they are
// freed).
const giveBackWait = 6 * time.Second

// measureGiveBack has the idle vmpod container write giveBackMiB into
// /dev/shm and delete it, and reads the guest RAM the pod holds on the
// host (memfd PSS over its processes) before and giveBackWait after: with
// free_page_reporting the freed memory goes back to the host.
func measureGiveBack(b *testing.B, e *env) {
	guestRAM := func() float64 {
		procs, err := listProcesses("/proc")
		if err != nil {
			b.Fatal(err)
		}
		var ram float64
		for _, p := range podProcesses(procs, e.c.Address, "idle") {
			if ms, err := procmaps.Read("/proc", p.pid, "smaps"); err == nil {
				ram += guestRAMMiB(ms)
			}
		}
		return ram
	}
	before := guestRAM()
	script := fmt.Sprintf("head -c %dm /dev/zero > /dev/shm/giveback && rm /dev/shm/giveback", giveBackMiB)
	if _, err := e.exec("idle", "giveback", "sh", "-c", script); err != nil {
		b.Fatal(err)
	}
	time.Sleep(giveBackWait)
	after := guestRAM()
	results.add(row{section: "memory", name: fmt.Sprintf("guest RAM (memfd PSS) %s after a container wrote and deleted %d MiB in /dev/shm", giveBackWait, giveBackMiB),
		unit: mib, value: summarize([]float64{after}), base: "before", baseVal: summarize([]float64{before})})
}

// cpuMeter reads the CPU time of container id's shim and of its other
// processes (QEMU, virtiofsd; or the container) now; the function it
// returns gives what each used since.
func cpuMeter(b *testing.B, e *env, id string) func() [2]float64 {
	read := func() [2]float64 {
		procs, err := listProcesses("/proc")
		if err != nil {
			b.Fatal(err)
		}
		var t [2]float64
		for i, p := range podProcesses(procs, e.c.Address, id) {
			v, err := cpuSeconds("/proc", p.pid)
			if err != nil {
				continue // exited meanwhile
			}
			t[min(i, 1)] += v
		}
		return t
	}
	before := read()
	return func() [2]float64 {
		after := read()
		return [2]float64{after[0] - before[0], after[1] - before[1]}
	}
}

// podShim returns the pid of container id's long-lived shim, or 0.
func podShim(b *testing.B, e *env, id string) int {
	procs, err := listProcesses("/proc")
	if err != nil {
		b.Fatal(err)
	}
	if ps := podProcesses(procs, e.c.Address, id); len(ps) > 0 {
		return ps[0].pid
	}
	return 0
}

// measureIdleMemory samples the idle pods -runs times, a second apart:
// PSS of the vmpod pod (shim, QEMU, virtiofsd) against the runc pod (shim
// and sleep), and the shim's RSS against runc's shim. It returns the idle
// vmpod pod's PSS.
func measureIdleMemory(b *testing.B, e *env) summary {
	var pod, podRunc, shim, shimRunc, qemuPSS, virtiofsd, shimPSS, guestRAM samples
	parts := map[string]*samples{}
	for _, p := range qemuParts {
		parts[p] = &samples{}
	}
	for i := 0; i < *runsFlag; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		procs, err := listProcesses("/proc")
		if err != nil {
			b.Fatal(err)
		}
		v := podProcesses(procs, e.c.Address, "idle")
		r := podProcesses(procs, e.c.Address, "idle-runc")
		if len(v) == 0 || len(r) == 0 {
			b.Fatalf("pod processes not found: vmpod %v, runc %v", v, r)
		}
		pod.add(totalPSS("/proc", v))
		podRunc.add(totalPSS("/proc", r))
		shim.add(rss(b, v[0]))
		shimRunc.add(rss(b, r[0]))
		shimPSS.add(totalPSS("/proc", v[:1]))
		var q, fs, ram float64
		for _, p := range v {
			if ms, err := procmaps.Read("/proc", p.pid, "smaps"); err == nil {
				ram += guestRAMMiB(ms)
			}
		}
		for _, p := range v[1:] {
			switch {
			case strings.HasPrefix(p.comm, "qemu"):
				q += totalPSS("/proc", []process{p})
				ms, err := procmaps.Read("/proc", p.pid, "smaps")
				if err != nil {
					b.Fatal(err)
				}
				exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
				for part, mib := range classifyQEMU(ms, exe, e.kernel, e.initrd) {
					parts[part].add(mib)
				}
			case strings.Contains(p.comm, "virtiofsd"):
				fs += totalPSS("/proc", []process{p})
			}
		}
		qemuPSS.add(q)
		virtiofsd.add(fs)
		guestRAM.add(ram)
	}
	results.add(row{section: "memory", name: "idle pod PSS (shim + QEMU + virtiofsd)", unit: mib, value: pod.summary(),
		base: "runc pod (shim + sleep)", baseVal: podRunc.summary(), target: &target{atMost: true, limit: 120}})
	results.add(row{section: "memory", name: "shim RSS", unit: mib, value: shim.summary(),
		base: "runc shim", baseVal: shimRunc.summary(), target: &target{atMost: true, limit: 25}})
	for _, part := range []struct {
		name string
		s    samples
	}{{"QEMU", qemuPSS}, {"virtiofsd (all its processes)", virtiofsd}, {"shim", shimPSS}} {
		results.add(row{section: "memory", name: "idle pod PSS: " + part.name, unit: mib, value: part.s.summary()})
	}
	// Where QEMU's memory goes, mapping by mapping (docs/performance.md,
	// "Where an idle pod's memory goes"), and the guest RAM across the
	// pod's processes (QEMU's share and the vhost-user backends').
	for _, part := range qemuParts {
		results.add(row{section: "memory", name: "idle pod PSS: QEMU, " + part, unit: mib, value: parts[part].summary()})
	}
	results.add(row{section: "memory", name: "idle pod PSS: guest RAM (memfd, all the pod's processes)", unit: mib, value: guestRAM.summary()})
	return pod.summary()
}

// idleCPUWindow is how long each run watches the idle pod's CPU use.
const idleCPUWindow = 3 * time.Second

// measureIdleCPU reads, -runs times, the CPU the idle pod of container id
// (shim, QEMU, virtiofsd) uses over idleCPUWindow, in cores.
func measureIdleCPU(b *testing.B, e *env, id string) summary {
	var cores samples
	for i := 0; i < *runsFlag; i++ {
		used := cpuMeter(b, e, id)
		start := time.Now()
		time.Sleep(idleCPUWindow)
		u := used()
		cores.add((u[0] + u[1]) / time.Since(start).Seconds())
	}
	s := cores.summary()
	results.add(row{section: "memory", name: "idle pod CPU use (shim + QEMU + virtiofsd)", unit: cpus, value: s})
	return s
}

// rss is p's RSS in MiB.
func rss(b *testing.B, p process) float64 {
	v, err := rssMiB("/proc", p.pid)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkGuestMemory boots, -runs times, a VM with the agent the way the
// shim does (vm.Start, no container) and asks the agent's GuestDetails for
// its RSS, and boots the floor init sleeping to read a bare idle guest's
// QEMU PSS. The shim exposes no GuestDetails, so the agent in a pod with a
// container is not reachable from here.
func BenchmarkGuestMemory(b *testing.B) {
	kernel, initrd := guestImage(b)
	var agentRSS, floorPSS, agentQEMU samples
	for i := 0; i < *runsFlag; i++ {
		rssV, qemuV, release := agentGuest(b, kernel, initrd)
		agentRSS.add(rssV)
		agentQEMU.add(qemuV)
		guestKernel = release
		floorPSS.add(floorIdlePSS(b, kernel))
	}
	results.add(row{section: "memory", name: "agent RSS in the guest (idle, no container)", unit: mib, value: agentRSS.summary(),
		target: &target{atMost: true, limit: 12}})
	results.add(row{section: "memory", name: "QEMU PSS, idle guest with the agent", unit: mib, value: agentQEMU.summary(),
		base: "floor (bare idle guest)", baseVal: floorPSS.summary()})
	b.ReportMetric(agentRSS.summary().median, "agent-MiB")
	b.ReportMetric(0, "ns/op")
}

// agentGuest boots the agent's image with vm.Start and returns the
// agent's RSS and QEMU's PSS in MiB, and the guest's kernel release.
func agentGuest(b *testing.B, kernel, initrd string) (agentMiB, qemuMiB float64, release string) {
	dir := b.TempDir()
	leakcheck.Check(b, leakcheck.Options{Roots: []string{dir}})
	hcfg := vmConfig(b, kernel, initrd)
	m := memorySettings(b)
	hcfg.FreePageReporting, hcfg.TCGTBSizeMiB = m.FreePageReporting, int(m.TCGTBSize)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	v, err := vm.Start(ctx, vm.Config{
		ID: "bench-agent", StateDir: dir + "/vm", Hypervisor: hcfg,
		VsockMode: vm.VsockAuto, DialTimeout: bootTimeout,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := v.Stop(ctx); err != nil {
			b.Error(err)
		}
	}()
	time.Sleep(settle)
	gd, err := v.Agent().GuestDetails(ctx, &agentpb.GuestDetailsRequest{})
	if err != nil {
		b.Fatal(err)
	}
	// Guest data is untrusted: an RSS beyond the guest's memory is wrong.
	if gd.AgentRssBytes == 0 || gd.AgentRssBytes > uint64(*memoryMiB)<<20 {
		b.Fatalf("agent reports an RSS of %d bytes in a %d MiB guest", gd.AgentRssBytes, *memoryMiB)
	}
	release = gd.KernelRelease
	if len(release) > 64 {
		release = release[:64]
	}
	q, err := pssMiB("/proc", v.Pid())
	if err != nil {
		b.Fatal(err)
	}
	return float64(gd.AgentRssBytes) / (1 << 20), q, release
}

// floorIdlePSS boots the floor init sleeping (vmpod_testinit=sleep) and
// returns QEMU's PSS once the guest idles.
func floorIdlePSS(b *testing.B, kernel string) float64 {
	cfg := vmConfig(b, kernel, floorInitrd(b, kernel, "floor-idle.img", nil))
	cfg.KernelParams = []string{"vmpod_testinit=sleep"}
	leakcheck.Check(b, leakcheck.Options{Roots: []string{cfg.StateDir}})
	q, err := qemu.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	defer q.Stop(context.Background())
	if err := q.Start(ctx); err != nil {
		b.Fatal(err)
	}
	for !strings.Contains(q.ConsoleTail(), "vmpod-testinit: sleeping") {
		select {
		case <-ctx.Done():
			b.Fatalf("floor guest did not reach its init within %s: %s", bootTimeout, q.ConsoleTail())
		case <-q.Done():
			b.Fatalf("floor guest exited: %v: %s", q.Err(), q.ConsoleTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
	time.Sleep(settle)
	v, err := pssMiB("/proc", q.Pid())
	if err != nil {
		b.Fatal(err)
	}
	return v
}
