package node

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/vmpod/vmpod/metrics"
)

// serveSandbox serves a sandbox's metrics under root/id, as a shim does.
func serveSandbox(t *testing.T, root, id, podName string) func() {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := metrics.New(id, os.Getpid(), time.Second)
	s.Attach(metrics.Source{Size: func() (int, uint64) { return 1, 256 << 20 }, PodName: podName, PodNamespace: "ns1"})
	s.ObservePhase(metrics.PhaseGuestBoot, time.Second)
	stop, err := metrics.ServeUnix(filepath.Join(dir, metrics.SocketName), s.Handler())
	if err != nil {
		t.Fatal(err)
	}
	return func() { stop(); os.RemoveAll(dir) }
}

// sandboxesOf returns the sandbox_id values of family name, with their
// pod_name.
func sandboxesOf(fams []*dto.MetricFamily, name string) map[string]string {
	out := map[string]string{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.Metric {
			var id, pod string
			for _, l := range m.Label {
				switch l.GetName() {
				case LabelSandbox:
					id = l.GetValue()
				case LabelPodName:
					pod = l.GetValue()
				}
			}
			out[id] = pod
		}
	}
	return out
}

func TestMonitorLabelsAndDropsSandboxes(t *testing.T) {
	root := t.TempDir()
	stopA := serveSandbox(t, root, "sb-a", "web")
	defer stopA()
	stopB := serveSandbox(t, root, "sb-b", "")
	os.Mkdir(filepath.Join(root, "no-socket"), 0o700) // metrics off: skipped
	m := &Monitor{StateRoot: root, SandboxTimeout: 2 * time.Second}

	fams, err := m.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := sandboxesOf(fams, "vmpod_vm_vcpus")
	if len(got) != 2 || got["sb-a"] != "web" || got["sb-b"] != "" {
		t.Fatalf("vmpod_vm_vcpus of sandboxes %v, want sb-a (pod web) and sb-b", got)
	}
	if h := sandboxesOf(fams, "vmpod_boot_phase_seconds"); len(h) != 2 {
		t.Errorf("boot phase histograms of %v, want both sandboxes", h)
	}

	stopB()
	fams, err = m.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if got := sandboxesOf(fams, "vmpod_vm_vcpus"); len(got) != 1 {
		t.Fatalf("after sb-b went: %v, want sb-a only", got)
	}
	if _, ok := sandboxesOf(fams, "vmpod_vm_vcpus")["sb-b"]; ok {
		t.Error("series of a gone sandbox still served")
	}
}

// A shim that accepts and never answers costs the monitor its timeout,
// and the other sandboxes are still served.
func TestMonitorBoundsAHangingSandbox(t *testing.T) {
	root := t.TempDir()
	stop := serveSandbox(t, root, "ok", "")
	defer stop()
	dir := filepath.Join(root, "stuck")
	os.Mkdir(dir, 0o700)
	ln, err := net.Listen("unix", filepath.Join(dir, metrics.SocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	m := &Monitor{StateRoot: root, SandboxTimeout: 300 * time.Millisecond}
	start := time.Now()
	fams, err := m.Gather()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("gather took %v with a hanging shim", d)
	}
	if err == nil || !strings.Contains(err.Error(), "stuck") {
		t.Errorf("error %v, want one naming the stuck sandbox", err)
	}
	if got := sandboxesOf(fams, "vmpod_vm_vcpus"); len(got) != 1 {
		t.Errorf("sandboxes served %v, want the healthy one", got)
	}
	up := sandboxesOf(fams, "vmpod_monitor_sandbox_scrape_success")
	if len(up) != 2 {
		t.Errorf("scrape_success for %v, want both", up)
	}
}

func TestScrapeRefusesOversizedReplies(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "m.sock")
	stop, err := metrics.ServeUnix(sock, bigHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Scrape(ctx, sock); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("scrape of an oversized reply: %v", err)
	}
}

type bigHandler struct{}

func (bigHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	line := []byte("# " + strings.Repeat("x", 1000) + "\n")
	for n := 0; n <= MaxScrapeBytes; n += len(line) {
		if _, err := w.Write(line); err != nil {
			return
		}
	}
}
