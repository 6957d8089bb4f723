package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/podconfig"
	"github.com/vmpod/vmpod/sizing"
)

// TestCRIPodSizing sizes pods' VMs as Kubernetes asks, through CRI:
//
//   - a pod whose sandbox carries 2 CPUs and 1 GiB (the kubelet's
//     LinuxPodSandboxConfig.Resources: crictl's linux.resources) gets a VM
//     of the defaults plus that, capped at the host's CPUs. containerd 2.x
//     turns linux.resources into the io.kubernetes.cri.sandbox-*
//     annotations itself; containerd 1.6 drops linux.resources, so there
//     the pod carries the same annotations, as 1.7+ would write them, and
//     the handler's pod_annotations passes them;
//   - a pod with Kata's default_vcpus and default_memory annotations,
//     which enable_annotations allows, gets a VM of that size;
//   - pods with an annotation enable_annotations does not allow, a
//     malformed allowed one, or a malformed sandbox annotation are
//     refused at RunPodSandbox with an error naming the annotation and the
//     key or value (no VM boots for them).
//
// Sizes are read in the guest, from a container: nproc and MemTotal.
func TestCRIPodSizing(t *testing.T) {
	harness.RequireVMs(t)
	d, err := harness.SelectedDaemon()
	if err != nil {
		t.Fatalf("containerd: %v", err)
	}
	e := newCRIEnvWith(t, criOptions{
		podAnnotations: []string{"io.katacontainers.*", "io.kubernetes.cri.sandbox-cpu-*", sizing.AnnotationMemory},
		qemuConfig:     `enable_annotations = ["^default_(vcpus|memory)$"]`,
	})
	const (
		defaultMiB = 512 // configuration.toml's default_memory
		podMiB     = 1024
		annMiB     = 768 // pod B's default_memory
	)

	// Pod A: 2 CPUs and 1 GiB for the whole pod.
	cfgA := e.podConfig("sized", false)
	cfgA["linux"].(map[string]any)["resources"] = map[string]any{
		"cpu_period": 100000, "cpu_quota": 200000, "cpu_shares": 2048, "memory_limit_in_bytes": podMiB << 20,
	}
	if d.Major < 2 {
		cfgA["annotations"] = map[string]string{
			sizing.AnnotationCPUPeriod: "100000",
			sizing.AnnotationCPUQuota:  "200000",
			sizing.AnnotationCPUShares: "2048",
			sizing.AnnotationMemory:    strconv.Itoa(podMiB << 20),
		}
		t.Logf("%s drops linux.resources: the sandbox annotations come as pod annotations", d)
	}
	cpusA, memA := e.guestSize(cfgA)
	if cpusA < 2 {
		t.Errorf("pod of 2 CPUs: nproc = %d in the guest, want at least 2", cpusA)
	}
	assertMemTotal(t, "pod of the defaults + 1 GiB", memA, defaultMiB+podMiB)

	// Pod B: Kata's annotations, allowed.
	cfgB := e.podConfig("annotated", false)
	cfgB["annotations"] = map[string]string{podconfig.DefaultVCPUs: "2", podconfig.DefaultMemory: strconv.Itoa(annMiB)}
	cpusB, memB := e.guestSize(cfgB)
	if cpusB != 2 {
		t.Errorf("pod with %s=2: nproc = %d in the guest, want 2", podconfig.DefaultVCPUs, cpusB)
	}
	assertMemTotal(t, fmt.Sprintf("pod with %s=%d", podconfig.DefaultMemory, annMiB), memB, annMiB)
	// The same kernel reserves about the same in both: the difference is
	// the difference of the VMs' memory, less the page structures of it.
	if diff, want := (memA-memB)>>10, int64(defaultMiB+podMiB-annMiB); diff > want || diff < want-32 {
		t.Errorf("MemTotal of pod A - pod B = %d MiB, want %d MiB (less at most 32)", diff, want)
	}

	// Refused before a VM boots.
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want []string
	}{
		{"not enabled", map[string]string{podconfig.KernelParams: "quiet"},
			[]string{podconfig.KernelParams + " is not enabled", "[hypervisor.qemu] enable_annotations", "configuration.toml"}},
		{"malformed", map[string]string{podconfig.DefaultMemory: "lots"},
			[]string{podconfig.DefaultMemory, "lots", "not a whole number of MiB"}},
		{"sandbox garbage", map[string]string{sizing.AnnotationMemory: "1Gi"},
			[]string{sizing.AnnotationMemory, "1Gi", "not a decimal integer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.at(t)
			cfg := e.podConfig("refused", false)
			cfg["annotations"] = tc.ann
			out, err := e.run("", "runp", "--runtime", "kata", e.writeJSON("pod.json", cfg))
			if err == nil {
				t.Fatalf("RunPodSandbox with %v succeeded: %s", tc.ann, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("RunPodSandbox error %q does not name %q", err, w)
				}
			}
		})
	}
	e.removeAllPods()
	e.assertNoPods()
}

// guestSize runs a pod of cfg with a container and returns what the
// guest shows there: nproc and MemTotal (KiB). The pod stays until the
// environment's cleanup.
func (e *criEnv) guestSize(cfg map[string]any) (cpus int, memKiB int64) {
	e.t.Helper()
	pod, podPath := e.runPod(cfg)
	c := e.startContainer(pod, podPath, containerConfig("size", 0, []string{"sleep", "100000"}, nil))
	e.waitState(c, "CONTAINER_RUNNING", time.Minute)
	out := e.must("exec", "-s", c, "sh", "-c", "nproc; grep MemTotal /proc/meminfo")
	f := strings.Fields(out)
	if len(f) != 4 || f[1] != "MemTotal:" || f[3] != "kB" {
		e.t.Fatalf("nproc; grep MemTotal: %q", out)
	}
	cpus, err1 := strconv.Atoi(f[0])
	memKiB, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		e.t.Fatalf("nproc; grep MemTotal: %q", out)
	}
	e.t.Logf("pod %v: %d CPUs, MemTotal %d KiB", field(cfg, "metadata", "name"), cpus, memKiB)
	return cpus, memKiB
}

// assertMemTotal checks a guest's MemTotal against the VM's memory: the
// kernel keeps some for itself (its image, the page structures), never
// more than a small share here.
func assertMemTotal(t *testing.T, what string, memKiB int64, vmMiB int) {
	t.Helper()
	const reserveMiB = 128
	if mib := memKiB >> 10; mib > int64(vmMiB) || mib < int64(vmMiB-reserveMiB) {
		t.Errorf("%s: MemTotal %d MiB in the guest, want %d MiB less at most %d for the kernel", what, mib, vmMiB, reserveMiB)
	}
}
