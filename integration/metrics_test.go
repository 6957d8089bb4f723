package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/metrics"
)

// TestShimMetrics runs two pods (VMs) with [runtime] debug = false and
// checks what operators see of them: each sandbox's metrics on its socket
// (`vmpod metrics`), both on one endpoint (`vmpod monitor`) until one pod
// goes, and a container that fails to start explained at warning level in
// containerd's log.
func TestShimMetrics(t *testing.T) {
	harness.RequireVMs(t)
	kernel, initrd := harness.GuestImage(t)
	stateRoot, err := os.MkdirTemp("", "vmpod-sb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	cfg := filepath.Join(t.TempDir(), "configuration.toml")
	const memoryMiB = 256
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[hypervisor.qemu]
kernel = %q
initrd = %q
accel = "tcg"
default_memory = %d
[runtime]
debug = false
enable_metrics = true
`, kernel, initrd, memoryMiB)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := harness.StartContainerd(t, harness.Options{
		ShimPath:    harness.Shim(t),
		VMPODConfig: cfg,
		Env:         []string{"VMPOD_STATE_ROOT=" + stateRoot},
		StateDirs:   []string{stateRoot},
	})
	t.Cleanup(func() { c.AssertClean(t) })
	e := &vmpodEnv{t: t, c: c, image: harness.ImportBusybox(t, c), stateRoot: stateRoot, config: cfg}
	vmpodBin := testbin.Build(t, "./cmd/vmpod", false)

	const podA, podB = "metrics-a", "metrics-b"
	e.runDetached(podA, nil, "sleep", "600")
	defer e.stopTask(podA)

	t.Run("container start error at warning", func(t *testing.T) {
		// A container of pod A whose command does not exist: the agent
		// fails its start and says why on the console.
		_, _, err := e.run("metrics-bad", "--annotation", "io.kubernetes.cri.container-type=container",
			"--annotation", "io.kubernetes.cri.sandbox-id="+podA, "--", "/no/such/binary")
		if err == nil {
			t.Fatal("a container with a missing binary started")
		}
		var found []string
		for _, l := range strings.Split(c.Logs(), "\n") {
			if strings.Contains(l, "level=warning") && strings.Contains(l, "vmpod-agent level=warning") &&
				strings.Contains(l, "sandbox="+podA) && strings.Contains(l, "no/such/binary") {
				found = append(found, l)
			}
		}
		if len(found) > 0 {
			t.Logf("raised: %s", found[0])
		} else {
			t.Errorf("no agent warning about /no/such/binary at warning level, tagged sandbox=%s, in containerd's log", podA)
		}
		// The rest of the console stays at debug.
		for _, l := range strings.Split(c.Logs(), "\n") {
			if strings.Contains(l, "vmpod-agent serving") && !strings.Contains(l, "level=debug") {
				t.Errorf("an ordinary console line above debug: %s", l)
			}
		}
	})

	e.runDetached(podB, nil, "sleep", "600")
	stoppedB := false
	defer func() {
		if !stoppedB {
			e.stopTask(podB)
		}
	}()

	t.Run("scrape", func(t *testing.T) {
		out, err := exec.Command(vmpodBin, "metrics", "--state-root", stateRoot, podA).Output()
		if err != nil {
			t.Fatalf("vmpod metrics %s: %v", podA, err)
		}
		fams := parseMetrics(t, out)
		vmMem := gaugeOf(t, fams, "vmpod_vm_memory_bytes")
		if vmMem != memoryMiB<<20 {
			t.Errorf("vm_memory_bytes %v, want %d MiB", vmMem, memoryMiB)
		}
		// The guest kernel has the VM's memory online...
		if online := gaugeOf(t, fams, "vmpod_guest_memory_online_bytes"); math.Abs(online-vmMem) > 4<<20 {
			t.Errorf("guest online memory %.1f MiB, VM memory %.1f MiB: want equal within 4 MiB", online/(1<<20), vmMem/(1<<20))
		}
		// ...and MemTotal is that less what the kernel reserves for itself
		// at boot (its image, page structures, firmware areas): 38 MiB of
		// 256 with Debian's cloud kernel.
		total := gaugeOf(t, fams, "vmpod_guest_memory_total_bytes")
		t.Logf("guest MemTotal %.1f MiB of %.0f MiB; QEMU RSS %.1f MiB; guest boot observed %d times",
			total/(1<<20), vmMem/(1<<20), gaugeOf(t, fams, "vmpod_hypervisor_resident_memory_bytes")/(1<<20),
			histCount(fams, "vmpod_boot_phase_seconds", "phase", metrics.PhaseGuestBoot))
		if diff := vmMem - total; diff < 0 || diff > 48<<20 {
			t.Errorf("guest MemTotal %.1f MiB, VM memory %.1f MiB: want MemTotal at most 48 MiB below", total/(1<<20), vmMem/(1<<20))
		}
		if v := gaugeOf(t, fams, "vmpod_guest_memory_available_bytes"); !(v > 0 && v <= total) {
			t.Errorf("guest MemAvailable %v, MemTotal %v", v, total)
		}
		if v := gaugeOf(t, fams, "vmpod_guest_scrape_success"); v != 1 {
			t.Errorf("guest_scrape_success %v", v)
		}
		for _, name := range []string{"vmpod_hypervisor_resident_memory_bytes", "vmpod_hypervisor_proportional_memory_bytes", "vmpod_shim_resident_memory_bytes", "vmpod_virtiofsd_resident_memory_bytes", "vmpod_agent_resident_memory_bytes"} {
			if v := gaugeOf(t, fams, name); !(v > 0) {
				t.Errorf("%s = %v, want > 0", name, v)
			}
		}
		if v := gaugeOf(t, fams, "vmpod_hypervisor_cpu_seconds_total"); !(v > 0.1) {
			t.Errorf("QEMU CPU %v s: a TCG boot takes more", v)
		}
		for _, phase := range []string{metrics.PhaseVMMStart, metrics.PhaseGuestBoot, metrics.PhaseAgentReady, metrics.PhaseContainerCreate} {
			if n := histCount(fams, "vmpod_boot_phase_seconds", "phase", phase); n < 1 {
				t.Errorf("boot phase %s: %d observations, want at least 1", phase, n)
			}
		}
		if n := histCount(fams, "vmpod_agent_rpc_duration_seconds", "method", "CreateContainer"); n < 2 {
			t.Errorf("agent CreateContainer calls timed: %d, want 2 (the pod's and the failed one)", n)
		}
		if v := gaugeOf(t, fams, "vmpod_guest_network_receive_bytes_total", "interface", "lo"); math.IsNaN(v) {
			t.Error("no counters of the guest's lo")
		}
		if v := gaugeOf(t, fams, "vmpod_vsock_bytes_total", "direction", "from_guest"); !(v > 0) {
			t.Errorf("vsock bytes from the guest %v, want > 0", v)
		}
		// The socket is root's only.
		st, err := os.Stat(filepath.Join(stateRoot, podA, metrics.SocketName))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("metrics socket: %v, mode %v; want 0600", err, st.Mode().Perm())
		}
	})

	t.Run("monitor", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, vmpodBin, "monitor", "--listen", "127.0.0.1:0", "--state-root", stateRoot)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatalf("vmpod monitor printed no address: %v", err)
		}
		i := strings.Index(line, "http://")
		if i < 0 {
			t.Fatalf("vmpod monitor: %q", line)
		}
		url := strings.TrimSpace(line[i:])
		ids := func() map[string]bool {
			t.Helper()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			out := map[string]bool{}
			for _, m := range parseMetrics(t, body)["vmpod_vm_vcpus"].GetMetric() {
				out[labelOf(m, "sandbox_id")] = true
			}
			return out
		}
		if got := ids(); !got[podA] || !got[podB] || len(got) != 2 {
			t.Fatalf("monitor's sandboxes %v, want %s and %s", got, podA, podB)
		}
		e.stopTask(podB)
		stoppedB = true
		if got := ids(); !got[podA] || got[podB] {
			t.Errorf("monitor's sandboxes after %s went: %v, want %s only", podB, got, podA)
		}
	})

	// The shim's timing lines are at info level, tagged with the sandbox.
	t.Run("timing lines", func(t *testing.T) {
		logs := strings.Split(c.Logs(), "\n")
		for _, want := range []struct{ sandbox, msg string }{
			{podA, `msg="vm started"`}, {podA, `msg="container created"`}, {podA, `msg="process started"`},
			{podB, `msg="vm started"`}, {podB, `msg="sandbox stopped"`},
		} {
			found := false
			for _, l := range logs {
				tagged := strings.Contains(l, " sandbox="+want.sandbox+" ") || strings.HasSuffix(l, " sandbox="+want.sandbox)
				found = found || tagged && strings.Contains(l, "level=info") && strings.Contains(l, want.msg) && strings.Contains(l, "duration=")
			}
			if !found {
				t.Errorf("no info line %s with a duration for sandbox %s", want.msg, want.sandbox)
			}
		}
	})
}

// stopTask kills and deletes container id and its task.
func (e *vmpodEnv) stopTask(id string) {
	e.t.Helper()
	e.ctrErr("task", "kill", "-s", "SIGKILL", id)
	e.waitStatus(id, "STOPPED")
	e.ctr("task", "delete", id)
	e.ctr("container", "delete", id)
}

func parseMetrics(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("metrics do not parse: %v\n%s", err, text)
	}
	return fams
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// gaugeOf is the value of the first sample of family name (gauge, counter
// or untyped) with the given label pairs; NaN when there is none.
func gaugeOf(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Errorf("no family %s", name)
		return math.NaN()
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			if labelOf(m, labels[i]) != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return math.NaN()
}

func histCount(fams map[string]*dto.MetricFamily, name, label, value string) uint64 {
	for _, m := range fams[name].GetMetric() {
		if labelOf(m, label) == value && m.Histogram != nil {
			return m.Histogram.GetSampleCount()
		}
	}
	return 0
}
