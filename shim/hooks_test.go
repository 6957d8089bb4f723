package shim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// hookBundle writes a bundle for id whose spec asks for a network namespace
// of its own and carries hooks.
func (e *env) hookBundle(id string, h *specs.Hooks, args ...string) string {
	e.t.Helper()
	dir := e.bundle(id, args...)
	spec, err := readSpec(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	spec.Hooks = h
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	data, err := json.Marshal(spec)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

func hookScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCreateHookFailureStartsNoSandbox checks that a failing createRuntime
// hook fails Create before the sandbox starts, naming the hook and its
// output, removes the namespace and state made for it, and runs poststop.
func TestCreateHookFailureStartsNoSandbox(t *testing.T) {
	e := newEnv(t)
	started := 0
	factory := e.svc.opts.NewSandbox
	e.svc.opts.NewSandbox = func(ctx context.Context, req SandboxRequest) (Sandbox, error) {
		started++
		return factory(ctx, req)
	}
	dir := t.TempDir()
	fail := hookScript(t, dir, "fail", "echo no-network >&2; exit 2")
	stop := hookScript(t, dir, "stop", "cat > "+filepath.Join(dir, "poststop.json"))
	s := e.fifos("hookfail", false)
	_, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "hookfail", Bundle: e.hookBundle("hookfail", &specs.Hooks{
		CreateRuntime: []specs.Hook{{Path: fail}},
		Poststop:      []specs.Hook{{Path: stop}},
	}, "true"), Stdout: s.stdout, Stderr: s.stderr})
	if err == nil {
		t.Fatal("Create succeeded")
	}
	for _, w := range []string{"createRuntime hook #0", fail, "exit status 2", "no-network"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if started != 0 {
		t.Errorf("a sandbox was started %d times", started)
	}
	if _, err := os.Stat(filepath.Join(StateRoot, "hookfail")); !os.IsNotExist(err) {
		t.Errorf("the sandbox's state (and network namespace) remain: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "poststop.json")); err != nil {
		t.Errorf("poststop did not run: %v", err)
	}
}

// TestHostHooksLeaveTheGuestSpec checks that the host hooks run on the host
// with a state whose pid names the namespace the shim made, and that the
// agent's spec keeps only the guest's.
func TestHostHooksLeaveTheGuestSpec(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	rec := hookScript(t, dir, "rec", `echo ran >> "$0.$1.count"; pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p'); readlink /proc/$pid/ns/net > "$0.$1.netns"`)
	hostNetns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	s := e.fifos("hooked", false)
	_, err = e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "hooked", Bundle: e.hookBundle("hooked", &specs.Hooks{
		CreateRuntime: []specs.Hook{{Path: rec, Args: []string{rec, "createRuntime"}}},
		Poststart:     []specs.Hook{{Path: rec, Args: []string{rec, "poststart"}}},
		Poststop:      []specs.Hook{{Path: rec, Args: []string{rec, "poststop"}}},
	}, "true"), Stdout: s.stdout, Stderr: s.stderr})
	e.call("create", err)
	netns := filepath.Join(StateRoot, "hooked", NetnsName)
	if _, err := os.Stat(netns); err != nil {
		t.Errorf("no network namespace made for the container: %v", err)
	}
	_, err = e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "hooked"})
	e.call("start", err)
	e.wait("hooked", "")
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "hooked"})
	e.call("delete", err)
	for _, kind := range []string{"createRuntime", "poststart", "poststop"} {
		data, err := os.ReadFile(rec + "." + kind + ".netns")
		if err != nil {
			t.Errorf("%s did not run: %v", kind, err)
			continue
		}
		if strings.TrimSpace(string(data)) == hostNetns {
			t.Errorf("%s: /proc/<state.pid>/ns/net is the host's network namespace", kind)
		}
		// Left in the agent's spec, libcontainer would run it again.
		if data, _ := os.ReadFile(rec + "." + kind + ".count"); string(data) != "ran\n" {
			t.Errorf("%s ran %d times, want once", kind, strings.Count(string(data), "ran"))
		}
	}
	e.sd.Shutdown()
	<-e.sd.Done()
	if _, err := os.Stat(netns); !os.IsNotExist(err) {
		t.Errorf("the container's network namespace remains after shutdown: %v", err)
	}
}
