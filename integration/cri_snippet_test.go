package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/testbin"
)

// TestCRIRuntimeSnippet installs the kata handler the way docs/kubernetes.md
// says, with the snippet that `make install` ships for the running
// containerd's configuration version: config/containerd-runtime.toml
// merged into config.toml for containerd 1.x, config/containerd-runtime-v3.toml
// as a drop-in (imports) for 2.x. CRI then lists the handler next to runc,
// and a pod run with it is a VM.
func TestCRIRuntimeSnippet(t *testing.T) {
	harness.RequireVMs(t)
	d, err := harness.SelectedDaemon()
	if err != nil {
		t.Fatalf("containerd: %v", err)
	}
	snippet := "containerd-runtime.toml"
	if d.Major >= 2 {
		snippet = "containerd-runtime-v3.toml"
	}
	e := newCRIEnvWith(t, criOptions{runtimeSnippet: filepath.Join(testbin.ModuleRoot(), "config", snippet)})

	info := e.decode(e.must("info"))
	runtimes, _ := field(info, "config", "containerd", "runtimes").(map[string]any)
	for handler, want := range map[string]string{"kata": "io.containerd.kata.v2", "runc": "io.containerd.runc.v2"} {
		if got := field(runtimes, handler, "runtimeType"); got != want {
			t.Errorf("%s with %s: handler %s has runtime type %v, want %s (runtimes: %v)", d, snippet, handler, got, want, runtimes)
		}
	}

	pod, podPath := e.runPod(e.podConfig("pod-s", false))
	c := e.startContainer(pod, podPath, containerConfig("s", 0, []string{"cat", "/proc/sys/kernel/random/boot_id"}, nil))
	e.waitState(c, "CONTAINER_EXITED", time.Minute)
	hostBoot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimSpace(string(hostBoot))
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := e.run("", "logs", c)
		if err == nil && strings.TrimSpace(out) != "" {
			if strings.TrimSpace(out) == host {
				t.Errorf("the pod of handler kata (from %s) sees the host's boot id: not a VM", snippet)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("crictl logs %s: %q (%v)", c, out, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	e.must("stopp", pod)
	e.must("rmp", pod)
	e.assertNoPods()
}
