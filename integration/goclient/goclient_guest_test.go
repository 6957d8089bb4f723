package goclient

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withSysctls sets linux.sysctl, as CRI does from a pod's sysctls
// (containerd 1.7's oci package has no option for it).
func withSysctls(sysctls map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		for k, v := range sysctls {
			s.Linux.Sysctl[k] = v
		}
		return nil
	}
}

// fields is s split on blanks and joined by one space: /proc/sys prints
// ping_group_range with a tab.
func fields(s string) string { return strings.Join(strings.Fields(s), " ") }

// TestGoClientNetSysctls: net.* sysctls of the spec (containerd 2.x's CRI
// puts these two into every pod sandbox) are set in the network namespace
// the container runs in, and read back from /proc/sys inside, with vmpod
// as with runc. A sysctl name that would leave /proc/sys/net fails Create
// with the container and the sysctl named.
func TestGoClientNetSysctls(t *testing.T) {
	e := newGoClientEnv(t, "")
	sysctls := map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"net.ipv4.ping_group_range":           "0 2147483647",
		"net/ipv4/tcp_keepalive_time":         "600",
		// Not net.*: libcontainer sets these in the container's IPC namespace.
		"kernel.shm_rmid_forced": "1",
		"fs.mqueue.msg_max":      "20",
	}
	for _, runtime := range []string{kataRuntime, runcRuntime} {
		t.Run(runtime, func(t *testing.T) {
			r := e.runContainer(t, "gosysctl-"+shortRuntime(runtime), runtime, withSysctls(sysctls),
				oci.WithProcessArgs("sh", "-c", "cd /proc/sys && cat net/ipv4/ip_unprivileged_port_start net/ipv4/ping_group_range net/ipv4/tcp_keepalive_time kernel/shm_rmid_forced fs/mqueue/msg_max"))
			if r.Exit.ExitCode() != 0 {
				t.Fatalf("exit status %d, stderr %q", r.Exit.ExitCode(), r.Stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
			want := []string{"0", "0 2147483647", "600", "1", "20"}
			if len(lines) != len(want) {
				t.Fatalf("read back %q, want %q", r.Stdout, want)
			}
			for i := range want {
				if fields(lines[i]) != want[i] {
					t.Errorf("sysctl %d read back as %q, want %q (output %q)", i, lines[i], want[i], r.Stdout)
				}
			}
		})
	}

	t.Run("bad name", func(t *testing.T) {
		c := e.newContainer(t, "gosysctl-bad", kataRuntime,
			withSysctls(map[string]string{"net.ipv4.conf./../../kernel/core_pattern": "|/bin/sh"}),
			oci.WithProcessArgs("true"))
		ctx, cancel := e.ctx(goClientCallTimeout)
		defer cancel()
		task, err := c.NewTask(ctx, (&taskIO{}).creator())
		if err == nil {
			task.Delete(ctx, containerd.WithProcessKill)
			t.Fatal("a sysctl escaping /proc/sys/net was accepted")
		}
		for _, want := range []string{"gosysctl-bad", `net.ipv4.conf./../../kernel/core_pattern`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
	})
}

// TestGoClientCgroupView: the container reads its own limits from its
// cgroup v2 files at /sys/fs/cgroup, read-only, with its cgroup as the
// root (/proc/self/cgroup is 0::/), as with runc on a cgroup v2 host.
// containerd's default spec has no /sys/fs/cgroup mount; the shim adds it.
func TestGoClientCgroupView(t *testing.T) {
	e := newGoClientEnv(t, "")
	r := e.runContainer(t, "gocgroup", kataRuntime,
		oci.WithMemoryLimit(96<<20), oci.WithCPUCFS(50000, 100000), oci.WithPidsLimit(77),
		oci.WithProcessArgs("sh", "-c", `cd /sys/fs/cgroup && cat memory.max cpu.max pids.max /proc/self/cgroup
if echo 1 > pids.max 2>/dev/null; then echo writable; fi`))
	if r.Exit.ExitCode() != 0 {
		t.Fatalf("exit status %d, stdout %q, stderr %q", r.Exit.ExitCode(), r.Stdout, r.Stderr)
	}
	want := "100663296\n50000 100000\n77\n0::/\n"
	if r.Stdout != want {
		t.Errorf("memory.max, cpu.max, pids.max and /proc/self/cgroup read %q, want %q", r.Stdout, want)
	}
}

// TestGoClientUserNamespace: a container with a user namespace runs with
// the spec's mappings applied in the guest and is root inside. With a
// snapshot remapped to the mapping (as ctr --uidmap and Kubernetes'
// hostUsers: false on runc without idmapped mounts), root owns its files
// over virtio-fs and can write them; with an unmapped one it still starts,
// the files showing as the overflow uid, and an exec joins the namespace.
func TestGoClientUserNamespace(t *testing.T) {
	e := newGoClientEnv(t, "")
	const base, size = 100000, 65536
	uidMap := []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: size}}
	gidMap := []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: size}}
	script := `cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; stat -c %u:%g /bin/sh
touch /etc/vmpod-userns && stat -c %u:%g /etc/vmpod-userns`

	t.Run("remapped snapshot", func(t *testing.T) {
		id := "gouserns"
		ctx, cancel := e.ctx(goClientCallTimeout)
		defer cancel()
		c, err := e.client.NewContainer(ctx, id,
			containerd.WithRuntime(kataRuntime, nil),
			containerd.WithRemappedSnapshot(id+"-snapshot", e.img, base, base),
			containerd.WithNewSpec(oci.WithImageConfig(e.img), oci.WithUserNamespace(uidMap, gidMap),
				oci.WithProcessArgs("sh", "-c", script)))
		if err != nil {
			t.Fatalf("creating container %s: %v", id, err)
		}
		t.Cleanup(func() { e.removeContainer(t, c) })
		r := e.runTask(t, c)
		if r.Exit.ExitCode() != 0 {
			t.Fatalf("exit status %d, stdout %q, stderr %q", r.Exit.ExitCode(), r.Stdout, r.Stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
		want := []string{"0 100000 65536", "0 100000 65536", "0", "0", "0:0", "0:0"}
		if len(lines) != len(want) {
			t.Fatalf("output %q, want lines %q", r.Stdout, want)
		}
		for i := range want {
			if fields(lines[i]) != want[i] {
				t.Errorf("line %d: %q, want %q (uid_map, gid_map, id -u, id -g, owner of /bin/sh, of a new file)", i, lines[i], want[i])
			}
		}
	})

	t.Run("unmapped snapshot", func(t *testing.T) {
		c := e.newContainer(t, "gouserns-plain", kataRuntime, oci.WithUserNamespace(uidMap, gidMap),
			oci.WithProcessArgs("sleep", "1000"))
		task, _ := e.newTask(t, c)
		e.start(t, task)
		r := e.runExec(t, task, "userns-exec", []string{"sh", "-c", "cat /proc/self/uid_map; id -u; stat -c %u /bin/sh"})
		if r.Exit.ExitCode() != 0 {
			t.Fatalf("exec: exit status %d, stdout %q, stderr %q", r.Exit.ExitCode(), r.Stdout, r.Stderr)
		}
		if got := fields(r.Stdout); got != "0 100000 65536 0 65534" {
			t.Errorf("exec: uid_map, id -u, owner of /bin/sh: %q, want \"0 100000 65536 0 65534\"", got)
		}
	})
}
