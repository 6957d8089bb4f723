package hooks

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/require"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/network"
	"golang.org/x/sys/unix"
)

// script writes an executable shell script into dir.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func hook(path string, args ...string) specs.Hook { return specs.Hook{Path: path, Args: args} }

// TestTakeSplitsByKind checks, kind by kind, that host hooks leave the
// spec and guest hooks stay.
func TestTakeSplitsByKind(t *testing.T) {
	h := hook("/bin/true")
	for _, tc := range []struct {
		kind  string
		set   func(*specs.Hooks)
		host  func(Host) []specs.Hook
		guest func(*specs.Hooks) []specs.Hook
	}{
		{CreateRuntime, func(x *specs.Hooks) { x.CreateRuntime = []specs.Hook{h} }, func(x Host) []specs.Hook { return x.CreateRuntime }, nil},
		//nolint:staticcheck // prestart is deprecated but in use
		{Prestart, func(x *specs.Hooks) { x.Prestart = []specs.Hook{h} }, func(x Host) []specs.Hook { return x.Prestart }, nil},
		{Poststart, func(x *specs.Hooks) { x.Poststart = []specs.Hook{h} }, func(x Host) []specs.Hook { return x.Poststart }, nil},
		{Poststop, func(x *specs.Hooks) { x.Poststop = []specs.Hook{h} }, func(x Host) []specs.Hook { return x.Poststop }, nil},
		{"createContainer", func(x *specs.Hooks) { x.CreateContainer = []specs.Hook{h} }, nil, func(x *specs.Hooks) []specs.Hook { return x.CreateContainer }},
		{"startContainer", func(x *specs.Hooks) { x.StartContainer = []specs.Hook{h} }, nil, func(x *specs.Hooks) []specs.Hook { return x.StartContainer }},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			spec := &specs.Spec{Hooks: &specs.Hooks{}}
			tc.set(spec.Hooks)
			host := Take(spec)
			if tc.host != nil {
				if got := tc.host(host); len(got) != 1 || got[0].Path != h.Path {
					t.Fatalf("host %s hooks = %v, want the hook", tc.kind, got)
				}
				if spec.Hooks != nil {
					t.Fatalf("spec keeps hooks %+v after the host's were taken", spec.Hooks)
				}
				return
			}
			if !host.Empty() {
				t.Fatalf("guest hook %s taken for the host: %+v", tc.kind, host)
			}
			if spec.Hooks == nil || len(tc.guest(spec.Hooks)) != 1 {
				t.Fatalf("guest hook %s left the spec: %+v", tc.kind, spec.Hooks)
			}
		})
	}
}

func TestCheckNamesBadHooks(t *testing.T) {
	dir := t.TempDir()
	ok := script(t, dir, "ok", "exit 0")
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	zero := 0
	for _, tc := range []struct {
		name string
		host Host
		want []string // in the error; none: no error
	}{
		{"fine", Host{CreateRuntime: []specs.Hook{hook(ok)}, Poststop: []specs.Hook{hook(ok)}}, nil},
		{"missing", Host{Prestart: []specs.Hook{hook(ok), hook("/nonexistent/hook")}}, []string{"prestart hook #1", "/nonexistent/hook", "does not exist on the host"}},
		{"relative", Host{Poststart: []specs.Hook{hook("bin/hook")}}, []string{"poststart hook #0", `"bin/hook" is not absolute`}},
		{"not executable", Host{Poststop: []specs.Hook{hook(plain)}}, []string{"poststop hook #0", plain, "not an executable"}},
		{"directory", Host{CreateRuntime: []specs.Hook{hook(dir)}}, []string{"createRuntime hook #0", "not an executable"}},
		{"zero timeout", Host{CreateRuntime: []specs.Hook{{Path: ok, Timeout: &zero}}}, []string{"createRuntime hook #0", "timeout 0 is not positive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.host.Check()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Check accepted bad hooks")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestRunGivesStateArgsEnv checks what a hook of each host kind receives:
// the state on stdin with the pid of a live host thread, its args (argv[0]
// included) and exactly its env.
func TestRunGivesStateArgsEnv(t *testing.T) {
	for _, kind := range []string{CreateRuntime, Prestart, Poststart, Poststop} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			p := script(t, dir, "h", `cat > "$OUT.state"; echo "$0 $1 $2" > "$OUT.args"; env > "$OUT.env"; readlink /proc/$PPID/ns/net > "$OUT.ppidns"`)
			h := specs.Hook{Path: p, Args: []string{"argv0", "one", "two"}, Env: []string{"OUT=" + out, "X=y"}}
			want := specs.State{Version: "1.1.0", ID: "c1", Status: specs.StateCreating, Bundle: "/b", Annotations: map[string]string{"a": "b"}}
			if err := Run(context.Background(), kind, []specs.Hook{h}, want, ""); err != nil {
				t.Fatal(err)
			}
			var got specs.State
			if err := json.Unmarshal(readFile(t, out+".state"), &got); err != nil {
				t.Fatal(err)
			}
			if got.Pid <= 0 {
				t.Errorf("state pid = %d", got.Pid)
			}
			got.Pid = 0
			if got.ID != want.ID || got.Version != want.Version || got.Status != want.Status || got.Bundle != want.Bundle || got.Annotations["a"] != "b" {
				t.Errorf("state = %+v, want %+v", got, want)
			}
			// sh's $0 is the script, as the kernel runs it; args follow.
			if a := strings.TrimSpace(string(readFile(t, out+".args"))); a != p+" one two" {
				t.Errorf("args = %q", a)
			}
			env := string(readFile(t, out+".env"))
			if !strings.Contains(env, "X=y\n") || strings.Contains(env, "GOPATH=") || strings.Contains(env, "HOME=") {
				t.Errorf("env is not the hook's own: %q", env)
			}
		})
	}
}

// TestRunInNetns checks that /proc/<state.pid>/ns/net is the namespace
// given while a hook runs, and that the hook itself runs in the runtime's
// (the shim's) namespace, as with runc: CNI plugins that a hook runs
// create their host side (a bridge) there.
func TestRunInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to create a network namespace")
	}
	dir := t.TempDir()
	ns := filepath.Join(dir, "netns")
	if err := network.NewNamespace(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := network.RemoveNamespace(ns); err != nil {
			t.Error(err)
		}
	})
	want := nsID(t, ns)
	out := filepath.Join(dir, "out")
	p := script(t, dir, "h", `pid=$(sed 's/.*"pid":\([0-9]*\).*/\1/'); readlink /proc/$pid/ns/net > "$OUT.state"; readlink /proc/self/ns/net > "$OUT.self"`)
	h := specs.Hook{Path: p, Env: []string{"OUT=" + out, "PATH=/usr/bin:/bin"}}
	if err := Run(context.Background(), CreateRuntime, []specs.Hook{h}, specs.State{ID: "c"}, ns); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(readFile(t, out+".state"))); got != want {
		t.Errorf("/proc/<state.pid>/ns/net is %q, want %q", got, want)
	}
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(readFile(t, out+".self"))); got != self {
		t.Errorf("the hook ran in network namespace %q, want the runtime's %q", got, self)
	}
	if self == want {
		t.Error("the test's thread was left in the hook's namespace")
	}
}

// nsID is what readlink shows for the namespace pinned at path.
func nsID(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return "net:[" + strconv.FormatUint(st.Ino, 10) + "]"
}

// processAlive reports whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}

func TestRunFailureNamesHookAndOutput(t *testing.T) {
	dir := t.TempDir()
	ok := script(t, dir, "ok", "touch "+filepath.Join(dir, "ran-ok"))
	bad := script(t, dir, "bad", "echo to-stdout; echo to-stderr >&2; exit 3")
	never := script(t, dir, "never", "touch "+filepath.Join(dir, "ran-never"))
	err := Run(context.Background(), Prestart, []specs.Hook{hook(ok), hook(bad), hook(never)}, specs.State{ID: "c"}, "")
	if err == nil {
		t.Fatal("a failing hook did not fail Run")
	}
	for _, w := range []string{"prestart hook #1", bad, "exit status 3", "to-stdout", "to-stderr"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ran-ok")); err != nil {
		t.Error("the hook before the failing one did not run")
	}
	if _, err := os.Stat(filepath.Join(dir, "ran-never")); err == nil {
		t.Error("a hook after the failing one ran")
	}
}

// TestRunTimeout checks that a hung hook, and what it started, are killed
// at its timeout, or at DefaultTimeout when it names none.
func TestRunTimeout(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	// The child keeps the output pipe open, as a daemonising hook would.
	p := script(t, dir, "hang", "sleep 300 & echo $! > "+pidFile+"; wait")
	one := 1
	old := DefaultTimeout
	t.Cleanup(func() { DefaultTimeout = old })
	DefaultTimeout = 1500 * time.Millisecond
	for _, tc := range []struct {
		name string
		h    specs.Hook
		want string
	}{
		{"hook timeout", specs.Hook{Path: p, Timeout: &one}, "timeout of 1s"},
		{"default timeout", specs.Hook{Path: p}, "timeout of 1.5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := Run(context.Background(), Poststart, []specs.Hook{tc.h}, specs.State{ID: "c"}, "")
			if err == nil {
				t.Fatal("a hung hook did not fail Run")
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("Run took %s", took)
			}
			for _, w := range []string{"poststart hook #0", p, "killed", tc.want} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(readFile(t, pidFile))))
			if err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for processAlive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if processAlive(pid) {
				t.Errorf("the hook's child %d outlived it", pid)
			}
		})
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
