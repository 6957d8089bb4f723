package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testrootfs"
	"google.golang.org/protobuf/types/known/anypb"
)

// recorder is the publisher double: it keeps the events in the order the
// forwarder published them.
type recorder struct {
	mu     sync.Mutex
	events []any
	closed bool
}

func (r *recorder) Publish(_ context.Context, _ string, e events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	return nil
}

func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		name := strings.TrimPrefix(topicOf(e), "/tasks/")
		switch e := e.(type) {
		case *eventstypes.TaskExit:
			name += ":" + e.ID
		case *eventstypes.TaskExecAdded:
			name += ":" + e.ExecID
		case *eventstypes.TaskExecStarted:
			name += ":" + e.ExecID
		}
		out = append(out, name)
	}
	return out
}

// env is one service with a host agent behind it.
type env struct {
	t    *testing.T
	ctx  context.Context
	svc  *service
	pub  *recorder
	sd   shutdown.Service
	root string
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root: the agent runs containers with libcontainer")
	}
}

func newEnv(t *testing.T) *env {
	needRoot(t)
	root, err := os.MkdirTemp("", "vmpod-shim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	leakcheck.Check(t, leakcheck.Options{Roots: []string{root}})
	old := StateRoot
	StateRoot = filepath.Join(root, "sandboxes")
	t.Cleanup(func() { StateRoot = old })

	ctx := namespaces.WithNamespace(context.Background(), "vmpod-test")
	ctx, sd := shutdown.WithShutdown(ctx)
	pub := &recorder{}
	svc := NewService(ctx, pub, sd, ServiceOptions{
		NewSandbox: hostSandboxFactory(t),
		LoadConfig: func(string) (*config.Config, error) { return config.Load("") },
	}).(*service)
	e := &env{t: t, ctx: ctx, svc: svc, pub: pub, sd: sd, root: root}
	t.Cleanup(func() {
		sd.Shutdown()
		select {
		case <-sd.Done():
		case <-time.After(30 * time.Second):
			t.Error("shutdown did not finish")
		}
	})
	return e
}

// bundle writes a bundle whose spec runs args in a busybox rootfs.
func (e *env) bundle(id string, args ...string) string {
	e.t.Helper()
	dir := filepath.Join(e.root, "bundles", id)
	rootfs := filepath.Join(dir, "rootfs")
	if err := testrootfs.Busybox(rootfs); err != nil {
		e.t.Fatal(err)
	}
	spec := testSpec(id, args...)
	data, err := json.Marshal(spec)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// stdio is the client side of a process's fifos.
type clientIO struct {
	stdin          string
	stdout, stderr string
	in             io.WriteCloser
	out, errb      *bytes.Buffer
	done           sync.WaitGroup
}

func (e *env) fifos(name string, withStdin bool) *clientIO {
	e.t.Helper()
	dir := filepath.Join(e.root, "fifos", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	s := &clientIO{stdout: filepath.Join(dir, "out"), stderr: filepath.Join(dir, "err"), out: &bytes.Buffer{}, errb: &bytes.Buffer{}}
	for _, f := range []struct {
		path string
		buf  *bytes.Buffer
	}{{s.stdout, s.out}, {s.stderr, s.errb}} {
		r, err := fifo.OpenFifo(e.ctx, f.path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			e.t.Fatal(err)
		}
		s.done.Add(1)
		go func(buf *bytes.Buffer) {
			defer s.done.Done()
			io.Copy(buf, r)
			r.Close()
		}(f.buf)
	}
	if withStdin {
		s.stdin = filepath.Join(dir, "in")
		w, err := fifo.OpenFifo(e.ctx, s.stdin, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			e.t.Fatal(err)
		}
		s.in = w
	}
	return s
}

func (s *clientIO) wait(t *testing.T) {
	t.Helper()
	ch := make(chan struct{})
	go func() { s.done.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("output streams did not close")
	}
}

func (e *env) create(id string, s *clientIO, args ...string) {
	e.t.Helper()
	_, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: e.bundle(id, args...), Stdin: s.stdin, Stdout: s.stdout, Stderr: s.stderr})
	if err != nil {
		e.t.Fatalf("create %s: %v", id, err)
	}
}

func (e *env) call(what string, err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

func (e *env) wait(id, execID string) *taskAPI.WaitResponse {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	resp, err := e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: id, ExecID: execID})
	e.call("wait "+id+" "+execID, err)
	return resp
}

func TestRunEchoEventsInOrder(t *testing.T) {
	e := newEnv(t)
	s := e.fifos("echo", false)
	e.create("echo", s, "sh", "-c", "echo hi; echo oops >&2")
	_, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "echo"})
	e.call("start", err)
	if w := e.wait("echo", ""); w.ExitStatus != 0 {
		t.Errorf("exit status %d, want 0", w.ExitStatus)
	}
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "echo"})
	e.call("delete", err)
	s.wait(t)
	if got := s.out.String(); got != "hi\n" {
		t.Errorf("stdout %q, want %q", got, "hi\n")
	}
	if got := s.errb.String(); got != "oops\n" {
		t.Errorf("stderr %q, want %q", got, "oops\n")
	}
	e.sd.Shutdown()
	<-e.sd.Done()
	want := []string{"create", "start", "exit:echo", "delete"}
	if got := e.pub.names(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events %v, want %v", got, want)
	}
}

func TestExitCodesAndKill(t *testing.T) {
	e := newEnv(t)
	s := e.fifos("three", false)
	e.create("three", s, "sh", "-c", "exit 3")
	_, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "three"})
	e.call("start", err)
	if w := e.wait("three", ""); w.ExitStatus != 3 {
		t.Errorf("exit status %d, want 3", w.ExitStatus)
	}
	if _, err := e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "three"}); err != nil {
		t.Fatal(err)
	}

	s = e.fifos("sleeper", false)
	e.create("sleeper", s, "sleep", "1000")
	_, err = e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "sleeper"})
	e.call("start", err)
	_, err = e.svc.Kill(e.ctx, &taskAPI.KillRequest{ID: "sleeper", Signal: uint32(syscall.SIGKILL)})
	e.call("kill", err)
	if w := e.wait("sleeper", ""); w.ExitStatus != 137 {
		t.Errorf("exit status after SIGKILL %d, want 137", w.ExitStatus)
	}
	if _, err := e.svc.Kill(e.ctx, &taskAPI.KillRequest{ID: "sleeper", Signal: uint32(syscall.SIGKILL)}); err == nil {
		t.Error("kill of an exited process succeeded")
	}
	if _, err := e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "sleeper"}); err != nil {
		t.Fatal(err)
	}
}

func TestExecAndStdin(t *testing.T) {
	e := newEnv(t)
	s := e.fifos("box", true)
	e.create("box", s, "cat")
	_, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "box"})
	e.call("start", err)

	es := e.fifos("box-exec", false)
	proc, _ := json.Marshal(&specs.Process{Args: []string{"sh", "-c", "echo from exec; exit 5"}, Cwd: "/", Env: []string{"PATH=/bin"}})
	_, err = e.svc.Exec(e.ctx, &taskAPI.ExecProcessRequest{ID: "box", ExecID: "x1", Stdout: es.stdout, Stderr: es.stderr, Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}})
	e.call("exec", err)
	_, err = e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "box", ExecID: "x1"})
	e.call("start exec", err)
	if w := e.wait("box", "x1"); w.ExitStatus != 5 {
		t.Errorf("exec exit status %d, want 5", w.ExitStatus)
	}
	// The exec's fifos reach EOF once its output is over, before Delete:
	// CRI's exec waits for that.
	es.wait(t)
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "box", ExecID: "x1"})
	e.call("delete exec", err)
	if got := es.out.String(); got != "from exec\n" {
		t.Errorf("exec stdout %q", got)
	}

	// stdin through cat, then EOF ends it.
	if _, err := s.in.Write([]byte("piped data\n")); err != nil {
		t.Fatal(err)
	}
	s.in.Close()
	_, err = e.svc.CloseIO(e.ctx, &taskAPI.CloseIORequest{ID: "box", Stdin: true})
	e.call("close io", err)
	if w := e.wait("box", ""); w.ExitStatus != 0 {
		t.Errorf("cat exit status %d", w.ExitStatus)
	}
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "box"})
	e.call("delete", err)
	s.wait(t)
	if got := s.out.String(); got != "piped data\n" {
		t.Errorf("cat stdout %q", got)
	}
	e.sd.Shutdown()
	<-e.sd.Done()
	want := "create start exec-added:x1 exec-started:x1 exit:x1 exit:box delete"
	if got := strings.Join(e.pub.names(), " "); got != want {
		t.Errorf("events %s, want %s", got, want)
	}
}

func TestLargeOutputArrivesWhole(t *testing.T) {
	e := newEnv(t)
	s := e.fifos("big", false)
	const size = 8 << 20
	e.create("big", s, "sh", "-c", "yes 0123456789abcdef | head -c 8388608")
	_, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "big"})
	e.call("start", err)
	e.wait("big", "")
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "big"})
	e.call("delete", err)
	s.wait(t)
	want := bytes.Repeat([]byte("0123456789abcdef\n"), size/17+1)[:size]
	if !bytes.Equal(s.out.Bytes(), want) {
		t.Errorf("got %d bytes of stdout, want %d exact bytes", s.out.Len(), size)
	}
}

// testSpec is a minimal OCI spec, as containerd's defaults give, running
// args in the bundle's rootfs.
func testSpec(id string, args ...string) *specs.Spec {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Permitted: caps, Effective: caps,
			},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: testCgroupParent + "/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore"},
			ReadonlyPaths: []string{"/proc/sys"},
		},
	}
}
