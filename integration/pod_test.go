package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/metrics/node"
)

// TestCRIPod runs two pods through containerd's CRI plugin and crictl, one
// VM each: containers of one pod share the VM, its network and its PID
// namespace; the pod's IP is reachable from the host; logs, exec, stats,
// stop with a grace period, restart and OOMKilled behave as kubelet
// expects; and nothing is left once the pods are removed.
func TestCRIPod(t *testing.T) {
	e := newCRIEnv(t)
	podCfg := e.podConfig("pod-a", true)
	pod, podPath := e.runPod(podCfg)

	server := e.startContainer(pod, podPath, containerConfig("server", 0, []string{"sh", "-c",
		"mkdir -p /www && echo hello-from-server > /www/index.html && echo serving && exec httpd -f -p 8080 -h /www"}, nil))
	client := e.startContainer(pod, podPath, containerConfig("client", 0, []string{"sh", "-c",
		"echo client-started; exec sleep 100000"}, map[string]any{
		"security_context": map[string]any{"namespace_options": map[string]any{"pid": 0}},
	}))
	e.waitState(server, "CONTAINER_RUNNING", time.Minute)
	e.waitState(client, "CONTAINER_RUNNING", time.Minute)

	hostBoot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	bootA := trim(e.must("exec", "-s", client, "cat", "/proc/sys/kernel/random/boot_id"))

	t.Run("one VM per pod", func(t *testing.T) {
		e := e.at(t)
		inServer := trim(e.must("exec", "-s", server, "cat", "/proc/sys/kernel/random/boot_id"))
		if bootA == "" || inServer != bootA {
			t.Errorf("boot ids of the pod's containers: %q and %q, want one guest", bootA, inServer)
		}
		if bootA == trim(string(hostBoot)) {
			t.Errorf("the pod sees the host's boot id %q", bootA)
		}
		if shims := harness.PidsWith(t, "containerd-shim-kata-v2", e.c.Address); len(shims) != 1 {
			t.Errorf("shims of the pod: %v, want one", shims)
		}
	})

	t.Run("pod settings", func(t *testing.T) {
		e := e.at(t)
		if h := trim(e.must("exec", "-s", client, "hostname")); h != "pod-a-host" {
			t.Errorf("hostname %q, want pod-a-host", h)
		}
		resolv := e.must("exec", "-s", client, "cat", "/etc/resolv.conf")
		if !strings.Contains(resolv, "nameserver 10.199.0.53") || !strings.Contains(resolv, "vmpod.test") {
			t.Errorf("resolv.conf in the container:\n%s", resolv)
		}
		// The client shares the pod's PID namespace: it sees the pause
		// process of the sandbox container.
		if ps := e.must("exec", "-s", client, "ps", "-o", "args"); !strings.Contains(ps, "/pause") {
			t.Errorf("ps in the client shows no /pause:\n%s", ps)
		}
	})

	podIP, _ := field(e.inspect("inspectp", pod), "status", "network", "ip").(string)
	t.Run("network", func(t *testing.T) {
		e := e.at(t)
		if got := trim(e.must("exec", "-s", client, "wget", "-q", "-O", "-", "http://localhost:8080/")); got != "hello-from-server" {
			t.Errorf("client got %q from localhost:8080", got)
		}
		if podIP == "" {
			t.Fatal("no pod IP in crictl inspectp")
		}
		hc := http.Client{Timeout: 30 * time.Second}
		resp, err := hc.Get(fmt.Sprintf("http://%s:8080/", podIP))
		if err != nil {
			t.Fatalf("host to pod IP %s: %v", podIP, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if trim(string(body)) != "hello-from-server" {
			t.Errorf("host got %q from %s:8080", body, podIP)
		}
		if out, err := e.run("", "exec", "-s", client, "ping", "-c", "1", "-W", "10", cniGateway); err != nil {
			t.Errorf("pod to the bridge gateway: %v\n%s", err, out)
		}
		addr := e.must("exec", "-s", client, "ip", "-4", "addr", "show", "eth0")
		if !strings.Contains(addr, podIP+"/24") {
			t.Errorf("guest eth0 lacks the pod IP %s:\n%s", podIP, addr)
		}
	})

	// `vmpod monitor`'s view of the pod: labelled with the CRI pod's name
	// and namespace, with the guest's eth0 traffic counted.
	t.Run("metrics", func(t *testing.T) {
		fams, err := (&node.Monitor{StateRoot: e.stateRoot}).Gather()
		if err != nil {
			t.Fatal(err)
		}
		labelled, eth0 := false, 0.0
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				if labelOf(m, "sandbox_id") != pod {
					continue
				}
				switch f.GetName() {
				case "vmpod_vm_vcpus":
					labelled = labelOf(m, "pod_name") == "pod-a" && labelOf(m, "pod_namespace") == "default"
				case "vmpod_guest_network_receive_bytes_total":
					if labelOf(m, "interface") == "eth0" {
						eth0 = m.GetCounter().GetValue()
					}
				}
			}
		}
		if !labelled {
			t.Errorf("no vmpod_vm_vcpus of sandbox %s labelled pod_name=pod-a pod_namespace=default", pod)
		}
		if eth0 <= 0 {
			t.Errorf("guest eth0 received %v bytes, after the host fetched a page from the pod", eth0)
		}
	})

	t.Run("logs", func(t *testing.T) {
		e := e.at(t)
		waitLog(t, e, server, "serving")
		waitLog(t, e, client, "client-started")
	})

	t.Run("exec", func(t *testing.T) {
		e := e.at(t)
		// crictl exits 1 and names the command's exit code.
		out, err := e.run("", "exec", "-s", client, "sh", "-c", "exit 3")
		if err == nil || !strings.Contains(err.Error(), "exited with 3") {
			t.Errorf("exec -s of exit 3: %q, %v", out, err)
		}
		out, err = e.run("piped into exec\n", "exec", "-i", client, "cat")
		if err != nil || out != "piped into exec\n" {
			t.Errorf("exec -i cat: %q, %v", out, err)
		}
		out, err = e.run("", "exec", client, "sh", "-c", "echo streamed; exit 5")
		if err == nil || !strings.Contains(err.Error(), "exit code 5") || trim(out) != "streamed" {
			t.Errorf("exec (streaming): %q, %v; want streamed and exit code 5", out, err)
		}
	})

	t.Run("stats", func(t *testing.T) {
		e := e.at(t)
		st := e.decode(e.must("stats", "-o", "json", "--id", client))
		stats, _ := field(st, "stats").([]any)
		if len(stats) != 1 {
			t.Fatalf("crictl stats: %v", st)
		}
		if ws := fmt.Sprint(field(stats[0], "memory", "workingSetBytes", "value")); ws == "" || ws == "0" || ws == "<nil>" {
			t.Errorf("working set of %s = %s, want non-zero: %v", client, ws, stats[0])
		}
		// Pod stats: containerd reads the pod's cgroup on the host, where
		// the shim put the VM.
		ps := e.decode(e.must("statsp", "-o", "json", "--id", pod))
		podStats, _ := field(ps, "stats").([]any)
		if len(podStats) != 1 {
			t.Fatalf("crictl statsp: %v", ps)
		}
		for _, f := range [][]string{{"linux", "memory", "workingSetBytes", "value"}, {"linux", "cpu", "usageCoreNanoSeconds", "value"}} {
			if v := fmt.Sprint(field(podStats[0], f...)); v == "" || v == "0" || v == "<nil>" {
				t.Errorf("pod stats %v = %s, want non-zero: %v", f, v, podStats[0])
			}
		}
		if cs, _ := field(podStats[0], "linux", "containers").([]any); len(cs) < 2 {
			t.Errorf("pod stats list %d containers, want the pod's two: %v", len(cs), podStats[0])
		}
		qemu := harness.PidsWith(t, "qemu-system", pod)
		if len(qemu) != 1 {
			t.Fatalf("QEMU processes of pod %s: %v", pod, qemu)
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", qemu[0]))
		want := fmt.Sprint(field(podCfg, "linux", "cgroup_parent")) + "/" + pod
		if !strings.Contains(string(cg), want) {
			t.Errorf("QEMU of pod %s is not in cgroup %s:\n%s", pod, want, cg)
		}
		// The shim too (Kata's sandbox_cgroup_only): its CPU counts
		// with the pod's.
		shims := harness.PidsWith(t, "containerd-shim-kata-v2", "-id "+pod)
		if len(shims) != 1 {
			t.Fatalf("shims of pod %s: %v", pod, shims)
		}
		if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", shims[0])); !strings.Contains(string(cg), want) {
			t.Errorf("shim of pod %s is not in cgroup %s:\n%s", pod, want, cg)
		}
	})

	t.Run("stop with grace period, restart", func(t *testing.T) {
		e := e.at(t)
		stubborn := e.startContainer(pod, podPath, containerConfig("stubborn", 0, []string{"sh", "-c",
			`trap "echo got-term" TERM; echo ready; while true; do sleep 1; done`}, nil))
		waitLog(t, e, stubborn, "ready")
		e.must("stop", "-t", "3", stubborn)
		st := e.waitState(stubborn, "CONTAINER_EXITED", time.Minute)
		if code := fmt.Sprint(field(st, "status", "exitCode")); code != "137" {
			t.Errorf("exit code after the grace period %s, want 137 (SIGKILL)", code)
		}
		waitLog(t, e, stubborn, "got-term")
		e.must("stop", stubborn) // again: still fine
		e.must("rm", stubborn)
		again := e.startContainer(pod, podPath, containerConfig("stubborn", 1, []string{"sh", "-c", "echo second-attempt"}, nil))
		st = e.waitState(again, "CONTAINER_EXITED", time.Minute)
		if code := fmt.Sprint(field(st, "status", "exitCode")); code != "0" {
			t.Errorf("second attempt exit code %s", code)
		}
		waitLog(t, e, again, "second-attempt")
		if b := trim(e.must("exec", "-s", client, "cat", "/proc/sys/kernel/random/boot_id")); b != bootA {
			t.Errorf("boot id changed to %s after a container restart", b)
		}
		e.must("rm", again)
	})

	t.Run("OOMKilled", func(t *testing.T) {
		e := e.at(t)
		hog := e.startContainer(pod, podPath, containerConfig("hog", 0, []string{"sh", "-c", "tail /dev/zero"},
			map[string]any{"resources": map[string]any{"memory_limit_in_bytes": 32 << 20}}))
		st := e.waitState(hog, "CONTAINER_EXITED", 2*time.Minute)
		if r := field(st, "status", "reason"); r != "OOMKilled" {
			t.Errorf("reason %v, want OOMKilled; status %v", r, field(st, "status"))
		}
		e.must("rm", hog)
	})

	t.Run("second pod, second VM", func(t *testing.T) {
		e := e.at(t)
		cfgB := e.podConfig("pod-b", false)
		podB, pathB := e.runPod(cfgB)
		c := e.startContainer(podB, pathB, containerConfig("b", 0, []string{"sleep", "100000"}, nil))
		bootB := trim(e.must("exec", "-s", c, "cat", "/proc/sys/kernel/random/boot_id"))
		if bootB == "" || bootB == bootA || bootB == trim(string(hostBoot)) {
			t.Errorf("boot ids: pod-a %q, pod-b %q, host %q: want three", bootA, bootB, trim(string(hostBoot)))
		}
		if shims := harness.PidsWith(t, "containerd-shim-kata-v2", e.c.Address); len(shims) != 2 {
			t.Errorf("shims for two pods: %v, want two", shims)
		}
		e.must("stopp", podB)
		e.must("rmp", podB)
	})

	e.must("stopp", pod)
	e.must("stopp", pod) // idempotent
	e.must("rmp", pod)
	e.assertNoPods()
}

// TestCRIBadInput: a container for a pod that does not exist is refused by
// the shim with a message naming the pod, as are a pod namespace that does
// not exist and a pod network interface vmpod cannot forward (before any VM
// boots); nothing is left behind.
func TestCRIBadInput(t *testing.T) {
	e := newVMPodEnv(t, "")
	nsDir := t.TempDir()

	t.Run("netns does not exist", func(t *testing.T) {
		missing := filepath.Join(nsDir, "no-such-netns")
		_, _, err := e.run("nonetns", "--with-ns", "network:"+missing, "--", "true")
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("error %v does not name %s", err, missing)
		}
		e.ctrErr("containers", "delete", "nonetns")
		e.c.AssertClean(t)
	})

	t.Run("interface vmpod cannot forward", func(t *testing.T) {
		ns := newNetns(t, "vmpod-badif")
		// A bridge: neither veth nor macvlan.
		if out, err := execIn(ns, "ip", "link", "add", "br0", "type", "bridge"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		_, _, err := e.run("badif", "--with-ns", "network:"+ns, "--", "true")
		if err == nil || !strings.Contains(err.Error(), "br0") || !strings.Contains(err.Error(), `"bridge"`) {
			t.Errorf("error %v does not name br0 and its type", err)
		}
		if out, _ := execIn(ns, "ip", "-o", "link"); strings.Contains(out, "_vmpod") {
			t.Errorf("tap left in the namespace:\n%s", out)
		}
		e.ctrErr("containers", "delete", "badif")
		e.c.AssertClean(t)
	})

	t.Run("container of an unknown pod", func(t *testing.T) {
		_, _, err := e.run("orphan",
			"--annotation", "io.kubernetes.cri.container-type=container",
			"--annotation", "io.kubernetes.cri.sandbox-id=no-such-pod",
			"--", "true")
		if err == nil || !strings.Contains(err.Error(), "sandbox no-such-pod has no running shim") {
			t.Errorf("error %v does not say pod no-such-pod has no shim", err)
		}
		e.ctrErr("containers", "delete", "orphan")
		e.c.AssertClean(t)
	})
}

// assertNoPods checks crictl lists no pod and no container.
func (e *criEnv) assertNoPods() {
	e.t.Helper()
	if out := trim(e.must("pods", "-q")); out != "" {
		e.t.Errorf("pods left: %s", out)
	}
	if out := trim(e.must("ps", "-a", "-q")); out != "" {
		e.t.Errorf("containers left: %s", out)
	}
}

func (e *criEnv) decode(s string) map[string]any {
	e.t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		e.t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

// waitLog waits until crictl logs of id holds line.
func waitLog(t *testing.T, e *criEnv, id, line string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := e.run("", "logs", id)
		if err == nil && strings.Contains(out, line) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("crictl logs %s: %q (%v), want a line %q", id, out, err, line)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// newNetns creates a named network namespace, removed at cleanup.
func newNetns(t *testing.T, name string) string {
	t.Helper()
	if out, err := execIn("", "ip", "netns", "add", name); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { execIn("", "ip", "netns", "del", name) })
	return filepath.Join("/run/netns", name)
}

// execIn runs a command, in network namespace ns when it is set.
func execIn(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", filepath.Base(ns)}, args...)
	}
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// unwrapExit returns the *exec.ExitError inside a crictl error, if any.
func unwrapExit(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee
	}
	return err
}

// TestCRIShimKilled: when a pod's shim dies, containerd's `shim delete`
// removes the VM's processes, mounts and state and vmpod's tap and
// redirects from the pod's network namespace (which CRI still holds);
// CRI sees the container exited, and the pod then stops and is removed as
// usual.
func TestCRIShimKilled(t *testing.T) {
	e := newCRIEnv(t)
	pod, podPath := e.runPod(e.podConfig("pod-k", false))
	c := e.startContainer(pod, podPath, containerConfig("k", 0, []string{"sleep", "100000"}, nil))
	e.waitState(c, "CONTAINER_RUNNING", time.Minute)

	netns := ""
	namespaces, _ := field(e.inspect("inspectp", pod), "info", "runtimeSpec", "linux", "namespaces").([]any)
	for _, ns := range namespaces {
		if field(ns, "type") == "network" {
			netns, _ = field(ns, "path").(string)
		}
	}
	if netns == "" {
		t.Fatal("no network namespace in crictl inspectp")
	}
	if out, err := execIn(netns, "ip", "-o", "link"); err != nil || !strings.Contains(out, "tap0_vmpod") {
		t.Fatalf("no vmpod tap in %s: %v\n%s", netns, err, out)
	}
	shims := harness.PidsWith(t, "containerd-shim-kata-v2", e.c.Address)
	if len(shims) != 1 {
		t.Fatalf("shims of the pod: %v, want one", shims)
	}
	if err := syscall.Kill(shims[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := execIn(netns, "ip", "-o", "link")
		if err == nil && !strings.Contains(out, "_vmpod") && len(harness.PidsWith(t, "qemu-system", e.stateRoot)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the shim died: tap or QEMU left (%v):\n%s", err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out, err := execIn(netns, "tc", "qdisc", "show", "dev", "eth0"); err != nil || strings.Contains(out, "ingress") {
		t.Errorf("eth0 in %s keeps an ingress qdisc (%v):\n%s", netns, err, out)
	}
	// CRI sees the container exit, as the kubelet would before removing
	// the pod. (containerd 2.x's first try at deleting the task can race
	// its own cleanup of the dead shim and fail; CRI retries it a second
	// later.)
	e.waitState(c, "CONTAINER_EXITED", time.Minute)
	e.must("stopp", pod)
	e.must("rmp", pod)
	e.assertNoPods()
}
