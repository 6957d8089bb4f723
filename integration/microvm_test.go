package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/podconfig"
)

// qemuMachine fails the test unless exactly one QEMU runs for id (a
// sandbox id in its -name) and it runs the machine type want.
func qemuMachine(t *testing.T, id, want string) {
	t.Helper()
	pids := harness.PidsWith(t, "qemu-system", "vmpod-"+id+",")
	if len(pids) != 1 {
		t.Fatalf("QEMU processes of %s: %v, want one", id, pids)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-machine" {
			if m, _, _ := strings.Cut(args[i+1], ","); m != want {
				t.Errorf("QEMU of %s runs -machine %s, want %s", id, args[i+1], want)
			}
			return
		}
	}
	t.Errorf("QEMU of %s has no -machine: %q", id, args)
}

// TestMicrovmCtr runs a container with `ctr run` on a microvm guest
// chosen by machine_type in [hypervisor.qemu] (one VM): stdout and stdin,
// a bind-mounted host directory (virtio-fs) read and written both ways,
// and an exec with its exit code. The pod's share is virtio-fs on
// virtio-mmio, which hung before microvm's transports were made modern.
func TestMicrovmCtr(t *testing.T) {
	c, image, stateRoot, cfg := harness.StartVMPodQEMU(t, `machine_type = "microvm"`, "")
	e := &vmpodEnv{t: t, c: c, image: image, stateRoot: stateRoot, config: cfg}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "in"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, _, err := e.run("micro", "--mount", "type=bind,src="+dir+",dst=/data,options=rbind:rw", "--",
			"sh", "-c", "cat /data/in; echo from guest > /data/out; echo started; exec sleep 1000")
		done <- result{out, err}
	}()
	e.waitStatus("micro", "RUNNING")
	qemuMachine(t, "micro", "microvm")

	out, _, err := e.ctrErr("task", "exec", "--exec-id", "e1", "micro", "sh", "-c", "cat /data/out; uname -m; exit 4")
	if code := exitCode(err); code != 4 {
		t.Errorf("exec exit code %d (%v), want 4", code, err)
	}
	if out != "from guest\nx86_64\n" {
		t.Errorf("exec stdout %q, want the container's write to the volume and the machine", out)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "out")); err != nil || string(data) != "from guest\n" {
		t.Errorf("host reads %q (%v) from the guest's write", data, err)
	}

	e.ctr("task", "kill", "--all", "-s", "KILL", "micro")
	select {
	case r := <-done:
		if code := exitCode(r.err); code != 137 {
			t.Errorf("ctr run exit code %d (%v), want 137 after SIGKILL", code, r.err)
		}
		if r.out != "from host\nstarted\n" {
			t.Errorf("ctr run stdout %q, want the host's file and started", r.out)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("ctr run did not return after SIGKILL")
	}
}

// TestCRIMicrovmPod runs a CRI pod on microvm chosen by the pod's Kata
// annotation (io.katacontainers.config.hypervisor.machine_type, enabled
// by enable_annotations) while the configuration keeps q35 (one VM): the
// pod's IP, on virtio-net over virtio-mmio, serves the host a page from a
// host-path volume (virtio-fs); exec and the container log work.
func TestCRIMicrovmPod(t *testing.T) {
	e := newCRIEnvWith(t, criOptions{
		podAnnotations: []string{"io.katacontainers.*"},
		qemuConfig:     `enable_annotations = ["^machine_type$"]`,
	})
	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello-from-volume\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	podCfg := e.podConfig("micro", false)
	podCfg["annotations"] = map[string]string{podconfig.MachineType: "microvm"}
	pod, podPath := e.runPod(podCfg)
	qemuMachine(t, pod, "microvm")

	server := e.startContainer(pod, podPath, map[string]any{
		"metadata": map[string]any{"name": "server", "attempt": 0},
		"image":    map[string]any{"image": harness.BusyboxRef},
		"command":  []string{"sh", "-c", "echo serving && exec httpd -f -p 8080 -h /www"},
		"log_path": "server-0.log",
		"mounts":   []map[string]any{{"container_path": "/www", "host_path": www, "readonly": true}},
	})
	e.waitState(server, "CONTAINER_RUNNING", time.Minute)
	waitLog(t, e, server, "serving")

	podIP, _ := field(e.inspect("inspectp", pod), "status", "network", "ip").(string)
	if podIP == "" {
		t.Fatal("no pod IP in crictl inspectp")
	}
	hc := http.Client{Timeout: 30 * time.Second}
	var body []byte
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := hc.Get(fmt.Sprintf("http://%s:8080/", podIP))
		if err == nil {
			body, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host to pod IP %s: %v", podIP, err)
		}
		time.Sleep(time.Second)
	}
	if trim(string(body)) != "hello-from-volume" {
		t.Errorf("host got %q from %s:8080, want the volume's page", body, podIP)
	}

	if out := trim(e.must("exec", "-s", server, "cat", "/www/index.html")); out != "hello-from-volume" {
		t.Errorf("exec cat of the volume's file: %q", out)
	}
	if out, err := e.run("", "exec", "-s", server, "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exited with 3") {
		t.Errorf("exec -s of exit 3: %q, %v", out, err)
	}

	e.must("stopp", pod)
	e.must("rmp", pod)
	e.assertNoPods()
}
