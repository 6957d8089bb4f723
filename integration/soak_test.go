package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpod/vmpod/integration/harness"
)

// soakWidth is how many containers (VMs) each round runs at once.
const soakWidth = 4

// soakRounds is how many rounds run: 6 in CI (24 VM boots, about four
// minutes under TCG on 2 cores), 20 with VMPOD_SOAK=full (`make soak`).
func soakRounds() int {
	if os.Getenv("VMPOD_SOAK") == "full" {
		return 20
	}
	return 6
}

// TestSoak runs rounds of soakWidth containers at once, each in its own
// VM: create, exec, kill, wait, delete, with exit codes that differ per
// container, exec and signal. Every exit code must arrive exactly as
// expected, and at the end no process, mount, socket, interface, network
// namespace or state directory may remain of what the rounds made.
func TestSoak(t *testing.T) {
	// Four TCG guests booting at once on a loaded 2-core host may take
	// longer than the default 30 s to answer: the soak is about
	// concurrency, not boot time.
	e := newVMPodEnv(t, "[agent]\ndial_timeout = \"3m\"\n")
	before := e.footprint(t)
	rounds := soakRounds()
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for i := 0; i < soakWidth; i++ {
			wg.Add(1)
			go func(n int) {
				defer wg.Done()
				e.soakOne(t, n)
			}(r*soakWidth + i)
		}
		wg.Wait()
		if t.Failed() {
			t.Fatalf("round %d of %d failed", r+1, rounds)
		}
	}
	e.c.AssertClean(t)
	after := e.footprint(t)
	for _, kind := range footprintKinds {
		if was, now := before[kind], after[kind]; strings.Join(now, "\n") != strings.Join(was, "\n") {
			t.Errorf("%s before the soak:\n%s\nafter:\n%s", kind, strings.Join(was, "\n"), strings.Join(now, "\n"))
		}
	}
}

// soakOne is one container's life. Container n runs either a shell that
// exits 20+n on SIGTERM or a sleep killed with SIGKILL (137), and one exec
// that exits 100+n. It reports failures with t.Errorf (it runs in a
// goroutine of the test).
func (e *vmpodEnv) soakOne(t *testing.T, n int) {
	id := fmt.Sprintf("soak%d", n)
	signal, want := "KILL", uint32(137)
	args := []string{"sleep", "1000"}
	if n%2 == 0 {
		signal, want = "TERM", uint32(20+n)
		args = []string{"sh", "-c", fmt.Sprintf("trap 'exit %d' TERM; while :; do sleep 1; done", 20+n)}
	}
	run := append([]string{"run", "-d", "--runtime", "io.containerd.kata.v2", e.image, id}, args...)
	if _, _, err := e.ctrErr(run...); err != nil {
		t.Errorf("%s: %v", id, err)
		return
	}
	defer func() {
		if _, _, err := e.ctrErr("containers", "delete", id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}()
	if err := e.waitRunning(id); err != nil {
		t.Errorf("%s: %v", id, err)
		return
	}
	execWant := 100 + n
	out, _, err := e.ctrErr("task", "exec", "--exec-id", "x", id, "sh", "-c", fmt.Sprintf("echo %s; exit %d", id, execWant))
	if code := exitCode(err); code != execWant || trim(out) != id {
		t.Errorf("%s: exec exited %d (%v) with output %q, want %d and %q", id, code, err, out, execWant, id)
	}
	waited := e.waitShim(id)
	if _, _, err := e.ctrErr("task", "kill", "-s", signal, id); err != nil {
		t.Errorf("%s: %v", id, err)
	}
	if w := <-waited; w.err != nil || w.status != want {
		t.Errorf("%s: exit status %d (wait error %v) after SIG%s, want %d", id, w.status, w.err, signal, want)
	}
	if _, _, err := e.ctrErr("task", "delete", id); err != nil {
		t.Errorf("%s: %v", id, err)
	}
}

// waitRunning is waitStatus(id, "RUNNING") for a goroutine: it returns an
// error instead of failing the test.
func (e *vmpodEnv) waitRunning(id string) error {
	for i := 0; i < 600; i++ {
		out, _, _ := e.ctrErr("task", "ls")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == id && f[2] == "RUNNING" {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("task %s never became RUNNING", id)
}

// footprintKinds are the kinds footprint lists.
var footprintKinds = []string{"processes", "mounts", "sockets", "state directories", "taps", "network namespaces"}

// footprint lists, by kind, what vmpod and containerd hold on the host for
// this test: processes and mounts under its directories, sockets in them,
// the network namespaces of those processes, and the host's taps (vmpod's
// are named tap<N>_vmpod). Other tests may run beside this one: only what
// can be this test's is listed. Lists are sorted so that before and after
// compare.
func (e *vmpodEnv) footprint(t *testing.T) map[string][]string {
	t.Helper()
	dirs := []string{e.stateRoot, e.c.State}
	fp := map[string][]string{}
	netns := map[string]bool{}
	for _, pid := range append(harness.PidsWith(t, e.stateRoot), harness.PidsWith(t, "containerd-shim-kata-v2", e.c.Address)...) {
		fp["processes"] = append(fp["processes"], itoa(pid))
		if ns, err := os.Readlink(filepath.Join("/proc", itoa(pid), "ns", "net")); err == nil {
			netns[ns] = true
		}
	}
	for ns := range netns {
		fp["network namespaces"] = append(fp["network namespaces"], ns)
	}
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			for _, d := range dirs {
				if len(fields) > 4 && strings.HasPrefix(fields[4], d) {
					fp["mounts"] = append(fp["mounts"], fields[4])
				}
			}
		}
		f.Close()
	}
	for _, d := range dirs {
		filepath.WalkDir(d, func(path string, de os.DirEntry, err error) error {
			if err == nil && de.Type()&os.ModeSocket != 0 {
				fp["sockets"] = append(fp["sockets"], path)
			}
			return nil
		})
	}
	ents, _ := os.ReadDir(e.stateRoot)
	for _, ent := range ents {
		fp["state directories"] = append(fp["state directories"], ent.Name())
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if strings.HasPrefix(l.Name(), "tap") {
			fp["taps"] = append(fp["taps"], l.Name())
		}
	}
	for _, v := range fp {
		sort.Strings(v)
	}
	return fp
}
