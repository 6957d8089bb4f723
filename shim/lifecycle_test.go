package shim

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// A signal sent to a created, never started, task ends it: Wait returns
// the signal's status, TaskExit follows TaskCreate with no TaskStart, and
// Start is refused afterwards.
func TestKillBeforeStart(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		sig  syscall.Signal
		want uint32
	}{
		{syscall.SIGKILL, 137},
		// A created init is runc's Go init, pid 1 of its namespace, waiting
		// on the exec fifo: the Go runtime cannot die of the signal there
		// and exits 2. runc gives the same (integration/goclient compares).
		{syscall.SIGTERM, 2},
	} {
		id := "created-" + strings.ToLower(strings.TrimPrefix(unix.SignalName(tc.sig), "SIG"))
		s := e.fifos(id, false)
		e.create(id, s, "sleep", "1000")
		_, err := e.svc.Kill(e.ctx, &taskAPI.KillRequest{ID: id, Signal: uint32(tc.sig)})
		e.call("kill "+id, err)
		w := e.wait(id, "")
		if w.ExitStatus != tc.want {
			t.Errorf("%s: exit status %d after %s, want %d", id, w.ExitStatus, unix.SignalName(tc.sig), tc.want)
		}
		if w.ExitedAt.AsTime().IsZero() {
			t.Errorf("%s: no exit time", id)
		}
		if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: id}); !errdefs.IsFailedPrecondition(errdefs.FromGRPC(err)) {
			t.Errorf("%s: Start after the exit: %v, want a failed precondition", id, err)
		}
		d, err := e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: id})
		e.call("delete "+id, err)
		if d.ExitStatus != tc.want {
			t.Errorf("%s: Delete reports status %d, want %d", id, d.ExitStatus, tc.want)
		}
		s.wait(t)
	}
	e.sd.Shutdown()
	<-e.sd.Done()
	want := "create exit:created-kill delete create exit:created-term delete"
	if got := strings.Join(e.pub.names(), " "); got != want {
		t.Errorf("events %s, want %s", got, want)
	}
}

// Kill --all of a created task (containerd's WithProcessKill) ends it too.
func TestKillAllBeforeStart(t *testing.T) {
	e := newEnv(t)
	s := e.fifos("all", false)
	e.create("all", s, "sleep", "1000")
	_, err := e.svc.Kill(e.ctx, &taskAPI.KillRequest{ID: "all", Signal: uint32(syscall.SIGKILL), All: true})
	e.call("kill --all", err)
	if w := e.wait("all", ""); w.ExitStatus != 137 {
		t.Errorf("exit status %d, want 137", w.ExitStatus)
	}
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "all"})
	e.call("delete", err)
	s.wait(t)
}

// Delete of a created task kills it and publishes its exit once, before
// TaskDelete.
func TestDeleteCreated(t *testing.T) {
	e := newEnv(t)
	s := e.fifos("abandoned", false)
	e.create("abandoned", s, "sleep", "1000")
	begin := time.Now()
	d, err := e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "abandoned"})
	e.call("delete", err)
	if d.ExitStatus != 137 {
		t.Errorf("Delete reports status %d, want 137", d.ExitStatus)
	}
	if took := time.Since(begin); took > createdKillWait {
		t.Errorf("Delete took %s: the killed init's exit was not seen", took)
	}
	s.wait(t)
	e.sd.Shutdown()
	<-e.sd.Done()
	want := "create exit:abandoned delete"
	if got := strings.Join(e.pub.names(), " "); got != want {
		t.Errorf("events %s, want %s", got, want)
	}
}

// Under a terminal containerd's clients make no stderr fifo but still name
// one: the task and its exec run, all output on stdout.
func TestTerminalWithoutStderrFifo(t *testing.T) {
	e := newEnv(t)
	s := e.ttyFifo("tty")
	missing := filepath.Join(e.root, "fifos", "tty", "no-such-stderr")
	spec := testSpec("tty", "sh", "-c", "echo init-out; echo init-err >&2; sleep 1000")
	spec.Process.Terminal = true
	bundle := e.bundle("tty")
	writeSpec(t, bundle, spec)
	_, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "tty", Bundle: bundle, Stdout: s.stdout, Stderr: missing, Terminal: true})
	e.call("create on a terminal with no stderr fifo", err)
	_, err = e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "tty"})
	e.call("start", err)

	es := e.ttyFifo("tty-exec")
	proc, _ := json.Marshal(&specs.Process{Terminal: true, Args: []string{"sh", "-c", "echo exec-out; echo exec-err >&2"}, Cwd: "/", Env: []string{"PATH=/bin"}})
	_, err = e.svc.Exec(e.ctx, &taskAPI.ExecProcessRequest{ID: "tty", ExecID: "x", Terminal: true, Stdout: es.stdout, Stderr: missing + "-exec",
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}})
	e.call("exec", err)
	_, err = e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "tty", ExecID: "x"})
	e.call("start exec on a terminal with no stderr fifo", err)
	if w := e.wait("tty", "x"); w.ExitStatus != 0 {
		t.Errorf("exec exit status %d", w.ExitStatus)
	}
	es.wait(t)
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "tty", ExecID: "x"})
	e.call("delete exec", err)
	for _, want := range []string{"exec-out", "exec-err"} {
		if !strings.Contains(es.out.String(), want) {
			t.Errorf("exec terminal output %q lacks %q", es.out.String(), want)
		}
	}

	_, err = e.svc.Kill(e.ctx, &taskAPI.KillRequest{ID: "tty", Signal: uint32(syscall.SIGKILL)})
	e.call("kill", err)
	e.wait("tty", "")
	_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: "tty"})
	e.call("delete", err)
	s.wait(t)
	for _, want := range []string{"init-out", "init-err"} {
		if !strings.Contains(s.out.String(), want) {
			t.Errorf("task terminal output %q lacks %q", s.out.String(), want)
		}
	}
}

// Exit times are the host's and never before the host time Start was
// called, however short the process.
func TestExitTimeAfterStart(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 5; i++ {
		id := "short-" + string(rune('a'+i))
		s := e.fifos(id, false)
		e.create(id, s, "true")
		before := time.Now()
		_, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: id})
		e.call("start", err)
		w := e.wait(id, "")
		after := time.Now()
		if at := w.ExitedAt.AsTime(); at.Before(before) || at.After(after) {
			t.Errorf("%s: exited at %s, not between Start (%s) and Wait's return (%s)", id, at, before, after)
		}
		_, err = e.svc.Delete(e.ctx, &taskAPI.DeleteRequest{ID: id})
		e.call("delete", err)
		s.wait(t)
	}
	// However short the process, TaskStart goes before its TaskExit.
	e.sd.Shutdown()
	<-e.sd.Done()
	var want []string
	for i := 0; i < 5; i++ {
		want = append(want, "create", "start", "exit:short-"+string(rune('a'+i)), "delete")
	}
	if got := strings.Join(e.pub.names(), " "); got != strings.Join(want, " ") {
		t.Errorf("events %s, want %s", got, strings.Join(want, " "))
	}
}

// ttyFifo is the client side of a process on a terminal: a stdout fifo
// only, as containerd's cio.WithTerminal makes.
func (e *env) ttyFifo(name string) *clientIO {
	e.t.Helper()
	dir := filepath.Join(e.root, "fifos", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	s := &clientIO{stdout: filepath.Join(dir, "out"), out: &bytes.Buffer{}, errb: &bytes.Buffer{}}
	r, err := fifo.OpenFifo(e.ctx, s.stdout, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
	if err != nil {
		e.t.Fatal(err)
	}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		io.Copy(s.out, r)
		r.Close()
	}()
	return s
}

func writeSpec(t *testing.T, bundle string, spec *specs.Spec) {
	t.Helper()
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}
