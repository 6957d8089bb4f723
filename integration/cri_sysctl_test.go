package integration

import (
	"strings"
	"testing"
	"time"
)

// containerd2PodSysctls are the sysctls containerd 2.x's CRI plugin adds
// to every pod sandbox (enable_unprivileged_ports, enable_unprivileged_icmp).
var containerd2PodSysctls = map[string]any{
	"net.ipv4.ip_unprivileged_port_start": "0",
	"net.ipv4.ping_group_range":           "0 2147483647",
}

// TestCRIPodSysctls runs a pod whose sandbox carries containerd 2.x's
// default sysctls (given here in the pod config, as containerd 1.6 has no
// such default). The pod starts, and a container of the pod, which shares
// the pod's network namespace, sees them and can use them: as uid 1000 it
// binds port 80. The same container reads its CRI limits from its cgroup
// v2 files at /sys/fs/cgroup.
func TestCRIPodSysctls(t *testing.T) {
	e := newCRIEnv(t)
	cfg := e.podConfig("sysctls", false)
	cfg["linux"].(map[string]any)["sysctls"] = containerd2PodSysctls
	pod, podPath := e.runPod(cfg)

	app := e.startContainer(pod, podPath, containerConfig("app", 0, []string{"sleep", "100000"}, map[string]any{
		"security_context": map[string]any{"run_as_user": map[string]any{"value": 1000}},
		"resources":        map[string]any{"memory_limit_in_bytes": 100663296, "cpu_period": 100000, "cpu_quota": 50000},
	}))
	e.waitState(app, "CONTAINER_RUNNING", time.Minute)

	t.Run("read back", func(t *testing.T) {
		e := e.at(t)
		out := e.must("exec", "-s", app, "sh", "-c", "cd /proc/sys/net/ipv4 && cat ip_unprivileged_port_start ping_group_range")
		if got := strings.Join(strings.Fields(out), " "); got != "0 0 2147483647" {
			t.Errorf("sysctls in the pod's container: %q, want \"0 0 2147483647\"", out)
		}
	})

	t.Run("unprivileged port", func(t *testing.T) {
		e := e.at(t)
		out := e.must("exec", "-s", app, "sh", "-c", `id -u; nc -l -p 80 -e true & p=$!; sleep 1; if kill -0 $p 2>/dev/null; then echo bound; kill $p; fi`)
		if got := strings.Fields(out); len(got) != 2 || got[0] != "1000" || got[1] != "bound" {
			t.Errorf("uid 1000 listening on port 80: %q, want \"1000\" then \"bound\"", out)
		}
	})

	t.Run("cgroup view", func(t *testing.T) {
		e := e.at(t)
		out := e.must("exec", "-s", app, "sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /proc/self/cgroup")
		if want := "100663296\n50000 100000\n0::/"; strings.TrimSpace(out) != want {
			t.Errorf("memory.max, cpu.max, /proc/self/cgroup: %q, want %q", out, want)
		}
	})
}
