// Package hooks runs a container's OCI hooks on the host.
//
// The OCI runtime spec splits hooks by where they run. createRuntime,
// prestart, poststart and poststop run in the runtime's namespace: for a VM
// runtime that is the host, where tools such as nerdctl and CNI wrappers put
// the binaries they name. createContainer and startContainer run in the
// container's namespaces, which are in the guest. Take splits a spec that
// way (as Kata does): the host hooks come out of the spec the agent gets,
// and the shim runs them with Run.
//
// A hook runs in the shim's namespaces (the runtime's) and gets the OCI
// state on stdin. Network hooks configure the container's network namespace
// through /proc/<state.pid>/ns/net (nerdctl's "oci-hook createRuntime" does
// CNI there); the container's process is in the guest, so Run reports
// instead the id of a host thread that entered the pod's network namespace
// and stays there until the hooks have run.
//
// See docs/hooks.md.
package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Kinds of host hooks, as the OCI spec's config.json names them.
const (
	CreateRuntime = "createRuntime"
	Prestart      = "prestart"
	Poststart     = "poststart"
	Poststop      = "poststop"
)

// DefaultTimeout bounds a hook that names no timeout, so that a hung hook
// cannot hang Create or Delete. A variable for tests.
var DefaultTimeout = 60 * time.Second

// waitDelay bounds the wait for a killed hook's output pipes, which a
// child of the hook may hold open.
const waitDelay = 2 * time.Second

// maxOutput bounds the output of a hook kept for its error.
const maxOutput = 4 << 10

// Host is the hooks the shim runs on the host, by kind.
type Host struct {
	CreateRuntime []specs.Hook
	Prestart      []specs.Hook
	Poststart     []specs.Hook
	Poststop      []specs.Hook
}

// Empty reports whether there is no host hook.
func (h Host) Empty() bool {
	return len(h.CreateRuntime)+len(h.Prestart)+len(h.Poststart)+len(h.Poststop) == 0
}

// kinds lists h's hooks by kind, in the order they run.
func (h Host) kinds() []struct {
	kind string
	list []specs.Hook
} {
	return []struct {
		kind string
		list []specs.Hook
	}{{CreateRuntime, h.CreateRuntime}, {Prestart, h.Prestart}, {Poststart, h.Poststart}, {Poststop, h.Poststop}}
}

// Take removes the host hooks from spec and returns them; the guest's
// (createContainer, startContainer) stay in spec.
func Take(spec *specs.Spec) Host {
	if spec == nil || spec.Hooks == nil {
		return Host{}
	}
	h := spec.Hooks
	//nolint:staticcheck // Prestart is deprecated, but still in use.
	host := Host{CreateRuntime: h.CreateRuntime, Prestart: h.Prestart, Poststart: h.Poststart, Poststop: h.Poststop}
	//nolint:staticcheck
	h.CreateRuntime, h.Prestart, h.Poststart, h.Poststop = nil, nil, nil, nil
	if len(h.CreateContainer) == 0 && len(h.StartContainer) == 0 {
		spec.Hooks = nil
	}
	return host
}

// Check refuses host hooks that cannot run, naming the hook: a path that
// is not absolute, does not exist on the host or is not an executable
// file, and a timeout that is not positive.
func (h Host) Check() error {
	var errs []error
	for _, k := range h.kinds() {
		for i, hook := range k.list {
			if err := check(hook); err != nil {
				errs = append(errs, fmt.Errorf("%s hook #%d: %w", k.kind, i, err))
			}
		}
	}
	return errors.Join(errs...)
}

func check(h specs.Hook) error {
	if !filepath.IsAbs(h.Path) {
		return fmt.Errorf("path %q is not absolute", h.Path)
	}
	fi, err := os.Stat(h.Path)
	if err != nil {
		return fmt.Errorf("path %s does not exist on the host: %w", h.Path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("path %s is not an executable file (mode %s)", h.Path, fi.Mode())
	}
	if h.Timeout != nil && *h.Timeout <= 0 {
		return fmt.Errorf("%s: timeout %d is not positive", h.Path, *h.Timeout)
	}
	return nil
}

// Run runs the hooks of kind in order, stopping at the first that fails.
// Each runs in the shim's namespaces (the runtime's, as the OCI spec says)
// and gets state on stdin, with state.Pid set to a host thread that is in
// the network namespace netns ("" for the shim's own) while the hooks run.
// The error names the hook (kind, index, path) and carries its output.
func Run(ctx context.Context, kind string, list []specs.Hook, state specs.State, netns string) error {
	if len(list) == 0 {
		return nil
	}
	tid, release, err := pinThread(netns)
	if err != nil {
		return fmt.Errorf("%s hooks: %w", kind, err)
	}
	defer release()
	state.Pid = tid
	data, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("%s hooks: encode state: %w", kind, err)
	}
	for i, h := range list {
		if err := runOne(ctx, h, data); err != nil {
			return fmt.Errorf("%s hook #%d %s: %w", kind, i, h.Path, err)
		}
	}
	return nil
}

// pinThread parks a locked OS thread in the network namespace at path (""
// for the shim's) until release, and returns its id: /proc/<tid>/ns/net is
// then that namespace. The thread is never unlocked: one whose namespace
// changed must not run other goroutines, and the runtime ends it when its
// goroutine returns.
func pinThread(path string) (tid int, release func(), err error) {
	type pinned struct {
		tid int
		err error
	}
	ready := make(chan pinned, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if path != "" {
			f, err := os.Open(path)
			if err != nil {
				ready <- pinned{err: fmt.Errorf("open network namespace: %w", err)}
				return
			}
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
			if err != nil {
				ready <- pinned{err: fmt.Errorf("enter network namespace %s: %w", path, err)}
				return
			}
		}
		ready <- pinned{tid: unix.Gettid()}
		<-done
	}()
	p := <-ready
	if p.err != nil {
		return 0, nil, p.err
	}
	return p.tid, func() { close(done) }, nil
}

// runOne runs h with state on stdin until it exits or its timeout (or
// DefaultTimeout) passes, when it and its process group are killed.
func runOne(ctx context.Context, h specs.Hook, state []byte) error {
	timeout := DefaultTimeout
	if h.Timeout != nil {
		timeout = time.Duration(*h.Timeout) * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out limitedBuffer
	cmd := exec.CommandContext(ctx, h.Path)
	if len(h.Args) > 0 {
		cmd.Args = h.Args
	}
	cmd.Env = h.Env // nil: the shim's, as runc does
	cmd.Stdin = bytes.NewReader(state)
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Its own process group, so that what the hook started goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("killed after its timeout of %s", timeout)
	}
	if out.Len() > 0 {
		return fmt.Errorf("%w; output: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	return fmt.Errorf("%w (no output)", err)
}

// limitedBuffer keeps the first maxOutput bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
