package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/require"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testrootfs"
	"github.com/vmpod/vmpod/vm"
)

// hostHookScript records, for the hook kind in $1, the state it got, the
// network namespace that state.pid names and its own, and the kernel it
// runs on, into $DIR. The createRuntime hook also puts a veth into the
// container's namespace, as a CNI hook would, whose address the container
// must see.
const hostHookScript = `#!/bin/sh
set -e
kind=$1
state=$(cat)
printf '%s' "$state" > "$DIR/$kind.json"
pid=$(printf '%s' "$state" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
readlink "/proc/$pid/ns/net" > "$DIR/$kind.pidns"
readlink /proc/self/ns/net > "$DIR/$kind.netns"
uname -r > "$DIR/$kind.uname"
if [ "$kind" = createRuntime ]; then
	ip link add "$PEER" type veth peer name eth0 netns "$pid"
	nsenter --net="/proc/$pid/ns/net" sh -c 'ip addr add 10.254.7.2/24 dev eth0 && ip link set eth0 up'

fi
`

// guestHookCommand records a guest hook's state and kernel into dir (a
// path as the hook sees it).
func guestHookCommand(kind, dir string) string {
	return fmt.Sprintf(`cat > %[2]s/%[1]s.json; uname -r > %[2]s/%[1]s.uname`, kind, dir)
}

// hookSpec writes ctr's default spec, on a busybox root file system of its
// own, changed by edit, for ctr run --config (which takes no image).
func (e *vmpodEnv) hookSpec(t *testing.T, name string, edit func(*specs.Spec)) string {
	t.Helper()
	var spec specs.Spec
	if err := json.Unmarshal([]byte(e.ctr("oci", "spec")), &spec); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := testrootfs.Busybox(root); err != nil {
		if errors.Is(err, testrootfs.ErrNoBusybox) {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: root}
	spec.Process.Args = []string{"true"}
	spec.Process.Env = []string{"PATH=/bin:/sbin:/usr/bin"}
	edit(&spec)
	data, err := json.Marshal(&spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+".json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestShimHooks runs a standalone container (ctr, no CRI) with a hook of
// every kind and checks where each ran and the state it got: the host
// hooks on the host, in the host's namespaces, with /proc/<state.pid>/ns/net
// naming the network namespace the shim made for the container, what
// createRuntime put there reaching the guest; createContainer and
// startContainer in the guest.
func TestShimHooks(t *testing.T) {
	const peer = "vmpodhk0"
	leakcheck.Check(t, leakcheck.Options{LinkPrefixes: []string{"vmpodhk"}})
	e := newVMPodEnv(t, "")
	release := imagetest.Release(t)
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	hostRelease := unix.ByteSliceToString(uts.Release[:])
	hostNetns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "host-hook")
	if err := os.WriteFile(script, []byte(hostHookScript), 0o755); err != nil {
		t.Fatal(err)
	}
	const id = "hooks"
	env := []string{"DIR=" + dir, "PEER=" + peer, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	host := func(kind string) []specs.Hook {
		return []specs.Hook{{Path: script, Args: []string{"host-hook", kind}, Env: env}}
	}
	// createContainer runs in the guest before pivot_root: its path is
	// the guest's, where the container's rootfs (and the bind mount in it)
	// is under vmpod's shared directory.
	guestRootfs := filepath.Join(vm.GuestSharedDir, id, "rootfs")
	cfg := e.hookSpec(t, "hooks", func(s *specs.Spec) {
		s.Process.Args = []string{"sh", "-c", "ip -4 addr show eth0"}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/hooks", Type: "bind", Source: dir, Options: []string{"rbind", "rw"}})
		s.Hooks = &specs.Hooks{
			CreateRuntime: host("createRuntime"),
			Prestart:      host("prestart"),
			Poststart:     host("poststart"),
			Poststop:      host("poststop"),
			CreateContainer: []specs.Hook{{
				Path: guestRootfs + "/bin/busybox",
				Args: []string{"sh", "-c", guestHookCommand("createContainer", guestRootfs+"/hooks")},
				Env:  []string{"PATH=" + guestRootfs + "/bin"},
			}},
			StartContainer: []specs.Hook{{
				Path: "/bin/busybox",
				Args: []string{"sh", "-c", guestHookCommand("startContainer", "/hooks")},
				Env:  []string{"PATH=/bin"},
			}},
		}
	})
	out, stderr, err := e.ctrErr("run", "--rm", "--runtime", "io.containerd.kata.v2", "--config", cfg, id)
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, "10.254.7.2/24") {
		t.Errorf("the interface the createRuntime hook made did not reach the guest: ip addr says %q", out)
	}

	read := func(name string) string {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("hook output %s: %v", name, err)
		}
		return strings.TrimSpace(string(data))
	}
	bundle := filepath.Join(e.c.State, "io.containerd.runtime.v2.task", harness.Namespace, id)
	podNetns := read("createRuntime.pidns")
	if podNetns == hostNetns || podNetns == "" {
		t.Errorf("createRuntime's /proc/<state.pid>/ns/net is the host's network namespace %q, want the container's", podNetns)
	}
	for _, tc := range []struct {
		kind, status, bundle, release string
		host                          bool
	}{
		{"createRuntime", "creating", bundle, hostRelease, true},
		{"prestart", "creating", bundle, hostRelease, true},
		{"createContainer", "creating", filepath.Join(vm.GuestSharedDir, id), release, false},
		{"startContainer", "created", filepath.Join(vm.GuestSharedDir, id), release, false},
		{"poststart", "running", bundle, hostRelease, true},
		{"poststop", "stopped", bundle, hostRelease, true},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			raw := read(tc.kind + ".json")
			t.Logf("%s hook got: %s", tc.kind, raw)
			var st specs.State
			if err := json.Unmarshal([]byte(raw), &st); err != nil {
				t.Fatalf("state: %v", err)
			}
			if st.ID != id || st.Status != specs.ContainerState(tc.status) || st.Bundle != tc.bundle || st.Pid <= 0 || st.Version == "" {
				t.Errorf("state = %+v, want id %s, status %s, bundle %s, a pid, an ociVersion", st, id, tc.status, tc.bundle)
			}
			if got := read(tc.kind + ".uname"); got != tc.release {
				t.Errorf("ran on kernel %q, want %q (host: %v)", got, tc.release, tc.host)
			}
			if !tc.host {
				return
			}
			// In the runtime's namespace, as with runc.
			if got := read(tc.kind + ".netns"); got != hostNetns {
				t.Errorf("ran in network namespace %q, want the host's %q", got, hostNetns)
			}
			if got := read(tc.kind + ".pidns"); got != podNetns {
				t.Errorf("/proc/<state.pid>/ns/net is %q, want the container's %q", got, podNetns)
			}
		})
	}
	e.c.AssertClean(t)
}

// TestShimHookFailures checks the bad cases: a failing createRuntime hook
// and one that hangs fail Create with the hook named and leave no VM; a
// hook path missing on the host is refused before anything starts; a
// failing poststart hook takes the container down. Every case runs the
// poststop hook, as runc does.
func TestShimHookFailures(t *testing.T) {
	e := newVMPodEnv(t, "")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fail := write("fail", "echo hook-says-no >&2; exit 7")
	hang := write("hang", "sleep 600")
	poststop := write("poststop", `cat > "$DIR/$ID.poststop"`)
	two := 2
	for _, tc := range []struct {
		id    string
		hooks specs.Hooks
		want  []string // in ctr's error
		// booted: a VM started (the failure came after the boot).
		booted bool
		// poststop: the poststop hook must have run.
		poststop bool
	}{
		{"fail-create", specs.Hooks{CreateRuntime: []specs.Hook{{Path: fail}}}, []string{"createRuntime hook #0", fail, "exit status 7", "hook-says-no"}, false, true},
		{"hang", specs.Hooks{Prestart: []specs.Hook{{Path: "/bin/true"}, {Path: hang, Timeout: &two}}}, []string{"prestart hook #1", hang, "killed after its timeout of 2s"}, false, true},
		{"missing", specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/nonexistent/vmpod-hook"}}}, []string{"createRuntime hook #0", "/nonexistent/vmpod-hook", "does not exist on the host"}, false, false},
		{"fail-poststart", specs.Hooks{Poststart: []specs.Hook{{Path: fail}}}, []string{"poststart hook #0", fail, "hook-says-no"}, true, true},
	} {
		t.Run(tc.id, func(t *testing.T) {
			hooks := tc.hooks
			hooks.Poststop = []specs.Hook{{Path: poststop, Env: []string{"DIR=" + dir, "ID=" + tc.id}}}
			cfg := e.hookSpec(t, tc.id, func(s *specs.Spec) {
				s.Process.Args = []string{"sleep", "600"}
				s.Hooks = &hooks
			})
			start := time.Now()
			_, stderr, err := e.ctrErr("run", "--rm", "--runtime", "io.containerd.kata.v2", "--config", cfg, tc.id)
			if err == nil {
				t.Fatal("ctr run succeeded")
			}
			t.Logf("ctr run failed after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr))
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("ctr's error does not say %q", w)
				}
			}
			booted := false
			for _, l := range strings.Split(e.c.Logs(), "\n") {
				booted = booted || strings.Contains(l, "starting VM") && strings.Contains(l, "sandbox="+tc.id)
			}
			if booted != tc.booted {
				t.Errorf("a VM was started: %v, want %v", booted, tc.booted)
			}
			_, err = os.Stat(filepath.Join(dir, tc.id+".poststop"))
			if tc.poststop && err != nil {
				t.Errorf("the poststop hook did not run: %v", err)
			}
			if !tc.poststop && err == nil {
				t.Error("the poststop hook ran for a container refused before it began")
			}
			// ctr run --rm deleted the container; nothing may remain.
			e.c.AssertClean(t)
		})
	}
}
