package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/testbin"
)

// probeHostPorts are the host ports a container in the guest tries: the
// agent's port (open only on the guest's side), low service ports, the
// usual daemons' (Docker, the kubelet, the API server), the ends of the
// 16-bit range and VMADDR_PORT_ANY; TestVsockProbe adds three random ones.
var probeHostPorts = []uint32{1024, 0, 22, 80, 443, 1025, 2375, 2376, 6443, 10250, 10255, 65535, 65536, 1<<32 - 1}

// probeOtherCIDs are the other addresses a guest could try: the local CID
// (1) and the guest's own (3, vm.vhostUserCID) would reach the agent's
// listener inside the guest through a loopback transport; 0 is the
// hypervisor; 4 and 1000 are where other VMs' CIDs live. Measured with the
// Debian 6.1 guest: with no vsock_loopback module, CID 1 goes out through
// virtio like 0, 4 and 1000, to vmpod's backend; the virtio transport
// refuses its own CID with ENODEV.
var probeOtherCIDs = []string{"1:1024", "3:1024", "0:1024", "4:1024", "1000:1024"}

// probeOtherTypes are the other socket types, on the host and on the
// guest's own CID. Neither has a transport in the guest: vmpod's backend
// does not offer VIRTIO_VSOCK_F_SEQPACKET (connect fails with
// ESOCKTNOSUPPORT) and virtio-vsock has no datagrams (socket fails with
// ENODEV).
var probeOtherTypes = []string{"seqpacket:1024", "seqpacket:2375", "seqpacket:3:1024", "dgram:1024", "dgram:2375", "dgram:3:1024"}

// otherTypeOutcomes are the answers accepted for seqpacket and dgram.
var otherTypeOutcomes = []string{"unreachable", "unsupported"}

// otherCIDOutcomes are the answers accepted from CIDs other than the
// host's: none is a connection, and none waits out a timeout (the backend
// resets a request for any CID at once, from the CID that was asked).
var otherCIDOutcomes = []string{"refused", "reset", "unreachable"}

// probeFlood is how many more attempts the probe makes on the host after
// the single ones, cycling over the host's stream ports, 8 at a time.
const probeFlood = 400

// probeLine is one line of vsockprobe's per-target output.
var probeLine = regexp.MustCompile(`^(\w+) cid (\d+) port (\d+): (\w+) \((.*)\)$`)

// TestVsockProbe is issue #7's "the guest can reach no host vsock port
// except those vmpod opens" (vmpod opens none), end to end: a container in
// a real VM (real containerd, shim, QEMU, kernel and agent) tries the host
// on many ports, the other CIDs and the other socket types once each, then
// the host a few hundred times more. No attempt may connect, and the host
// must answer every stream attempt with a reset or a refusal within the
// probe's timeout. An exec streaming output meanwhile must lose nothing,
// the agent must keep serving afterwards, and the shim, whose vhost-user
// backend answered every attempt, must hold no more descriptors than
// before.
func TestVsockProbe(t *testing.T) {
	e := newVMPodEnv(t, "")
	probe := testbin.Build(t, "./integration/internal/vsockprobe", true)
	const id = "vsockprobe"
	e.runDetached(id, []string{"--mount", "type=bind,src=" + probe + ",dst=/vsockprobe,options=rbind:ro"}, "sleep", "1000")
	shim := e.shimPid(t, id)
	// A first exec opens whatever the shim opens lazily for execs, so the
	// count below is the steady state.
	e.ctr("task", "exec", "--exec-id", "warmup", id, "true")
	before := shimFDs(t, shim)

	// An exec streams output over the agent's connection for as long as
	// the probe runs: the resets must not disturb an established stream.
	type result struct {
		out string
		err error
	}
	events := e.watchEvents()
	streamed := make(chan result, 1)
	go func() {
		out, _, err := e.ctrErr("task", "exec", "--exec-id", "stream", id, "sh", "-c", streamScript)
		streamed <- result{out, err}
	}()
	events.waitTopics(t, id, "/tasks/exec-started")

	args := []string{"/vsockprobe", "-timeout", "2s", "-flood", strconv.Itoa(probeFlood), "-workers", "8"}
	ports := append(slices.Clone(probeHostPorts), randomPorts(3)...)
	for _, p := range ports {
		args = append(args, strconv.FormatUint(uint64(p), 10))
	}
	args = append(append(args, probeOtherCIDs...), probeOtherTypes...)
	out, stderr, err := e.ctrErr(append([]string{"task", "exec", "--exec-id", "probe", id}, args...)...)
	t.Logf("vsockprobe:\n%s", out)
	if err != nil {
		t.Errorf("vsockprobe exited %d (%v); stderr %q", exitCode(err), err, stderr)
	}
	checkProbeOutput(t, out, len(ports)+len(probeOtherCIDs)+len(probeOtherTypes))

	// The probes did not disturb the sandbox's own connection: the agent
	// still starts processes and carries their output.
	if got, _, err := e.ctrErr("task", "exec", "--exec-id", "after", id, "sh", "-c", "echo alive; touch /tmp/stop-stream"); err != nil || got != "alive\n" {
		t.Errorf("exec after the probes: output %q, error %v; want \"alive\\n\"", got, err)
	}
	select {
	case r := <-streamed:
		checkStream(t, r.out, r.err)
	case <-time.After(time.Minute):
		t.Error("the streaming exec did not end within a minute of being told to stop")
	}
	events.stop()
	waitShimFDs(t, shim, before)

	e.ctr("task", "kill", "-s", "KILL", id)
	e.waitStatus(id, "STOPPED")
	e.deleteAndCheck(t, id, shim)
}

// streamScript prints numbered lines until /tmp/stop-stream exists, then
// "end".
const streamScript = `i=0; while [ ! -e /tmp/stop-stream ]; do echo "line $i"; i=$((i+1)); sleep 0.02; done; echo end`

// checkStream checks the streaming exec's output: every line, in order,
// then "end".
func checkStream(t *testing.T, out string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("streaming exec: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) < 2 || lines[len(lines)-1] != "end" {
		t.Errorf("streaming exec printed %d lines ending %q, want numbered lines then \"end\"", len(lines), lines[len(lines)-1])
		return
	}
	for i, l := range lines[:len(lines)-1] {
		if want := fmt.Sprintf("line %d", i); l != want {
			t.Errorf("streaming exec line %d is %q, want %q: output lost or reordered", i, l, want)
			return
		}
	}
	t.Logf("streaming exec carried %d lines while the probe ran", len(lines)-1)
}

// randomPorts picks n ports above the well-known range, different each run
// and logged by the probe's output.
func randomPorts(n int) []uint32 {
	ports := make([]uint32, n)
	for i := range ports {
		ports[i] = 1025 + rand.Uint32N(65535-1025)
	}
	return ports
}

// checkProbeOutput checks vsockprobe's output: want per-target lines and
// the flood line.
func checkProbeOutput(t *testing.T, out string, want int) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != want+1 {
		t.Fatalf("vsockprobe printed %d lines, want %d targets and the flood line", len(lines), want)
	}
	for _, line := range lines[:want] {
		m := probeLine.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("unexpected probe line %q", line)
			continue
		}
		typ, cid, port, outcome, detail := m[1], m[2], m[3], m[4], m[5]
		if ok := acceptedOutcomes(typ, cid); !slices.Contains(ok, outcome) {
			t.Errorf("%s cid %s port %s: %s (%s), want one of %v", typ, cid, port, outcome, detail, ok)
		}
	}
	counts, err := parseFlood(lines[want])
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for outcome, n := range counts {
		total += n
		if n > 0 && !slices.Contains(hostOutcomes, outcome) {
			t.Errorf("%d of the %d flood attempts on the host ended %s", n, probeFlood, outcome)
		}
	}
	if total != probeFlood {
		t.Errorf("flood line %q counts %d attempts, want %d", lines[want], total, probeFlood)
	}
}

// hostOutcomes are the answers accepted for a stream on the host (CID 2):
// a reset or a refusal, which proves the attempt went through the vsock
// transport to vmpod's backend and was answered, so the check is not
// vacuous.
var hostOutcomes = []string{"refused", "reset"}

// acceptedOutcomes are the outcomes vsockprobe may report for a target of
// socket type typ on cid.
func acceptedOutcomes(typ, cid string) []string {
	switch {
	case typ != "stream":
		return otherTypeOutcomes
	case cid == "2":
		return hostOutcomes
	}
	return otherCIDOutcomes
}

// parseFlood reads "flood N: outcome=count ...".
func parseFlood(line string) (map[string]int, error) {
	head, rest, ok := strings.Cut(line, ":")
	if !ok || head != fmt.Sprintf("flood %d", probeFlood) {
		return nil, fmt.Errorf("flood line %q, want \"flood %d: ...\"", line, probeFlood)
	}
	counts := map[string]int{}
	for _, f := range strings.Fields(rest) {
		k, v, ok := strings.Cut(f, "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil {
			return nil, fmt.Errorf("flood line %q: bad count %q", line, f)
		}
		counts[k] = n
	}
	return counts, nil
}

// shimFDSlack is how many more descriptors the shim may hold after the
// probes than before: a ttrpc connection or a log pipe in flight, not one
// per probe.
const shimFDSlack = 4

// waitShimFDs waits until the shim holds at most shimFDSlack descriptors
// more than before; the last exec's stdio closes asynchronously.
func waitShimFDs(t *testing.T, pid int, before map[string]string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		now := shimFDs(t, pid)
		if len(now) <= len(before)+shimFDSlack {
			t.Logf("shim holds %d descriptors after the probes, %d before", len(now), len(before))
			return
		}
		if time.Now().After(deadline) {
			var added []string
			for fd, target := range now {
				if before[fd] != target {
					added = append(added, fd+" -> "+target)
				}
			}
			slices.Sort(added)
			t.Errorf("shim holds %d descriptors after the probes, %d before; new:\n%s", len(now), len(before), strings.Join(added, "\n"))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// shimFDs lists process pid's descriptors and what they point at.
func shimFDs(t *testing.T, pid int) map[string]string {
	t.Helper()
	dir := filepath.Join("/proc", itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("descriptors of the shim: %v", err)
	}
	fds := make(map[string]string, len(entries))
	for _, ent := range entries {
		// A descriptor closed between ReadDir and Readlink is just gone.
		if target, err := os.Readlink(filepath.Join(dir, ent.Name())); err == nil {
			fds[ent.Name()] = target
		}
	}
	return fds
}
