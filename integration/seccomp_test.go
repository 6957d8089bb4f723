package integration

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// CRI's SecurityProfile types (k8s.io/cri-api, runtime/v1).
const (
	seccompRuntimeDefault = 0
	seccompLocalhost      = 2
)

// TestSeccomp runs one pod (one VM) through containerd's CRI plugin with
// two containers: one under containerd's RuntimeDefault profile, which
// runs normally, and one under a Localhost profile denying mkdir, where
// mkdir fails with EPERM as it would under runc. The profiles are turned
// into linux.seccomp by containerd on the host and applied in the guest.
func TestSeccomp(t *testing.T) {
	e := newCRIEnv(t)
	pod, podPath := e.runPod(e.podConfig("seccomp", false))

	profile := e.writeJSON("deny-mkdir.json", map[string]any{
		"defaultAction": "SCMP_ACT_ALLOW",
		"syscalls": []map[string]any{
			{"names": []string{"mkdir", "mkdirat"}, "action": "SCMP_ACT_ERRNO"},
		},
	})
	withProfile := func(p map[string]any) map[string]any {
		return map[string]any{"security_context": map[string]any{"seccomp": p}}
	}
	sleep := []string{"sleep", "100000"}
	def := e.startContainer(pod, podPath, containerConfig("default", 0, sleep,
		withProfile(map[string]any{"profile_type": seccompRuntimeDefault})))
	local := e.startContainer(pod, podPath, containerConfig("deny-mkdir", 0, sleep,
		withProfile(map[string]any{"profile_type": seccompLocalhost, "localhost_ref": profile})))
	e.waitState(def, "CONTAINER_RUNNING", time.Minute)
	e.waitState(local, "CONTAINER_RUNNING", time.Minute)

	t.Run("runtime default", func(t *testing.T) {
		e := e.at(t)
		out := e.must("exec", "-s", def, "sh", "-c", "grep Seccomp: /proc/self/status; mkdir /tmp/x && echo made")
		if !strings.Contains(out, "Seccomp:\t2") || !strings.Contains(out, "made") {
			t.Errorf("under RuntimeDefault: %q; want a seccomp filter (Seccomp: 2) and mkdir to work", out)
		}
	})

	t.Run("localhost profile", func(t *testing.T) {
		e := e.at(t)
		if out := e.must("exec", "-s", local, "grep", "Seccomp:", "/proc/self/status"); !strings.Contains(out, "Seccomp:\t2") {
			t.Errorf("no seccomp filter under the Localhost profile: %q", out)
		}
		out, err := e.run("", "exec", "-s", local, "mkdir", "/tmp/x")
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 || !strings.Contains(err.Error(), "Operation not permitted") {
			t.Errorf("mkdir under a profile denying it: output %q, error %v; want exit code 1 and Operation not permitted", out, err)
		}
		if out, err := e.run("", "exec", "-s", local, "ls", "-A", "/tmp"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("/tmp after the denied mkdir: %q, %v; want it empty", out, err)
		}
	})
}
