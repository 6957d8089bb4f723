package goclient

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/runtime/v2/runc/options"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/require"
)

// TestGoClientKillBeforeStart: a signal the process dies of, sent to a
// created task that was never started, ends it with runc's status and a
// TaskExit (no TaskStart); Delete WithProcessKill of a created task returns
// and stops the standalone container's VM.
func TestGoClientKillBeforeStart(t *testing.T) {
	e := newGoClientEnv(t, "")
	events := e.recordEvents(t)

	// runc's statuses first: vmpod must give the same.
	runcStatus := map[syscall.Signal]uint32{}
	for _, runtime := range []string{runcRuntime, kataRuntime} {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			name := fmt.Sprintf("%s/%s", shortRuntime(runtime), strings.ToLower(unixSignalName(sig)))
			t.Run(name, func(t *testing.T) {
				id := fmt.Sprintf("kbs-%s-%d", shortRuntime(runtime), sig)
				c := e.newContainer(t, id, runtime, oci.WithProcessArgs("sleep", "1000"))
				task, _ := e.newTask(t, c)
				ch := e.waitChan(t, task)
				ctx, cancel := e.ctx(goClientCallTimeout)
				defer cancel()
				if err := task.Kill(ctx, sig); err != nil {
					t.Fatalf("kill %s of the created task: %v", unixSignalName(sig), err)
				}
				st := waitExit(t, "the created task after "+unixSignalName(sig), ch, time.Minute)
				switch runtime {
				case runcRuntime:
					runcStatus[sig] = st.ExitCode()
					t.Logf("runc: a created task exits with %d after %s", st.ExitCode(), unixSignalName(sig))
				default:
					want, ok := runcStatus[sig]
					if !ok {
						t.Fatal("no runc status to compare with")
					}
					if st.ExitCode() != want {
						t.Errorf("exit status %d after %s, runc gives %d", st.ExitCode(), unixSignalName(sig), want)
					}
				}
				if sig == syscall.SIGKILL && st.ExitCode() != 137 {
					t.Errorf("exit status %d after SIGKILL, want 137", st.ExitCode())
				}
				if st.ExitTime().IsZero() {
					t.Error("no exit time")
				}
				del := e.deleteTask(t, task)
				if del.ExitCode() != st.ExitCode() {
					t.Errorf("Delete reports status %d, Wait %d", del.ExitCode(), st.ExitCode())
				}
				events.waitTopics(t, id, "/tasks/create", "/tasks/exit:"+id, "/tasks/delete")
				for _, topic := range events.topics(id) {
					if topic == "/tasks/start" {
						t.Errorf("a task never started sent /tasks/start: %v", events.topics(id))
					}
				}
			})
		}
	}

	for _, runtime := range []string{runcRuntime, kataRuntime} {
		t.Run(shortRuntime(runtime)+"/delete with process kill", func(t *testing.T) {
			id := "kbs-del-" + shortRuntime(runtime)
			c := e.newContainer(t, id, runtime, oci.WithProcessArgs("sleep", "1000"))
			task, _ := e.newTask(t, c)
			ctx, cancel := e.ctx(time.Minute)
			defer cancel()
			begin := time.Now()
			st, err := task.Delete(ctx, containerd.WithProcessKill)
			if err != nil {
				t.Fatalf("Delete WithProcessKill of the created task (after %s): %v", time.Since(begin).Round(time.Millisecond), err)
			}
			if st.ExitCode() != 137 {
				t.Errorf("Delete reports status %d, want 137", st.ExitCode())
			}
			events.waitTopics(t, id, "/tasks/create", "/tasks/exit:"+id, "/tasks/delete")
			if runtime == kataRuntime {
				// The shim stops the VM when containerd shuts it down
				// after the delete.
				harness.WaitNoProcess(t, 30*time.Second, "qemu-system", filepath.Join(e.stateRoot, id))
			}
		})
	}
}

// TestGoClientTerminal: with cio.WithTerminal containerd makes no stderr
// fifo; a task and an exec on a terminal run, their output (both streams)
// arrives on stdout.
func TestGoClientTerminal(t *testing.T) {
	e := newGoClientEnv(t, "")
	for _, runtime := range []string{runcRuntime, kataRuntime} {
		t.Run(shortRuntime(runtime), func(t *testing.T) {
			id := "tty-" + shortRuntime(runtime)
			c := e.newContainer(t, id, runtime, oci.WithTTY, oci.WithProcessArgs("sh", "-c", "echo init-out; echo init-err >&2; sleep 1000"))
			task, out := e.newTask(t, c, cio.WithTerminal)
			ch := e.waitChan(t, task)
			e.start(t, task)
			r := e.runExec(t, task, "tty-exec", []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}, cio.WithTerminal)
			if r.Exit.ExitCode() != 5 {
				t.Errorf("exec on a terminal: exit status %d, want 5", r.Exit.ExitCode())
			}
			for _, want := range []string{"exec-out", "exec-err"} {
				if !strings.Contains(r.Stdout, want) {
					t.Errorf("exec terminal output %q lacks %q", r.Stdout, want)
				}
			}
			if r.Stderr != "" {
				t.Errorf("exec on a terminal wrote %q to stderr", r.Stderr)
			}
			// A second, plain exec beside the terminal's.
			r = e.runExec(t, task, "plain-exec", []string{"sh", "-c", "echo plain-out; echo plain-err >&2"})
			if r.Stdout != "plain-out\n" || r.Stderr != "plain-err\n" {
				t.Errorf("plain exec: stdout %q, stderr %q", r.Stdout, r.Stderr)
			}
			ctx, cancel := e.ctx(goClientCallTimeout)
			defer cancel()
			if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			st := waitExit(t, "the task on a terminal", ch, time.Minute)
			if st.ExitCode() != 137 {
				t.Errorf("task exit status %d after SIGKILL, want 137", st.ExitCode())
			}
			e.deleteTask(t, task)
			got := out.Stdout.String()
			for _, want := range []string{"init-out", "init-err"} {
				if !strings.Contains(got, want) {
					t.Errorf("task terminal output %q lacks %q", got, want)
				}
			}
		})
	}
}

// TestGoClientExitTimes: exit and start times come from one clock. For
// short tasks and execs, exited_at lies between the host time before
// Start was called and the host time Wait returned, and Status, Delete
// and TaskExit report the same time as Wait. (The events' envelope times
// are when the shim published them, not when the process started: with
// runc too an exec's exit can be stamped before its TaskExecStarted is
// published, so they are not compared.)
func TestGoClientExitTimes(t *testing.T) {
	e := newGoClientEnv(t, "")
	events := e.recordEvents(t)
	const tasks, execs = 3, 12

	check := func(t *testing.T, what string, r runResult) {
		t.Helper()
		at := r.Exit.ExitTime()
		if at.Before(r.Started) {
			t.Errorf("%s: exited_at %s is %s before Start was called", what, at.Format(time.RFC3339Nano), r.Started.Sub(at))
		}
		if at.After(r.Returned) {
			t.Errorf("%s: exited_at %s is %s after Wait returned", what, at.Format(time.RFC3339Nano), at.Sub(r.Returned))
		}
	}
	// exitEvent returns the TaskExit of process execID ("": the init) of
	// container id.
	exitEvent := func(t *testing.T, id, execID string) *eventtypes.TaskExit {
		t.Helper()
		want := execID
		if want == "" {
			want = id
		}
		events.waitTopics(t, id, "/tasks/exit:"+want)
		for _, ev := range events.of(id) {
			if x, ok := ev.Event.(*eventtypes.TaskExit); ok && x.ID == want {
				return x
			}
		}
		t.Fatalf("no TaskExit of %s", want)
		return nil
	}

	for _, runtime := range []string{runcRuntime, kataRuntime} {
		t.Run(shortRuntime(runtime), func(t *testing.T) {
			for i := 0; i < tasks; i++ {
				id := fmt.Sprintf("times-%s-%d", shortRuntime(runtime), i)
				c := e.newContainer(t, id, runtime, oci.WithProcessArgs("true"))
				task, _ := e.newTask(t, c)
				ch := e.waitChan(t, task)
				var r runResult
				r.Started = time.Now()
				e.start(t, task)
				r.Exit = waitExit(t, "task "+id, ch, goClientWaitTimeout)
				r.Returned = time.Now()
				check(t, "task "+id, r)
				ctx, cancel := e.ctx(goClientCallTimeout)
				status, err := task.Status(ctx)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if !status.ExitTime.Equal(r.Exit.ExitTime()) {
					t.Errorf("task %s: Status says exited at %s, Wait %s", id, status.ExitTime, r.Exit.ExitTime())
				}
				del := e.deleteTask(t, task)
				if !del.ExitTime().Equal(r.Exit.ExitTime()) {
					t.Errorf("task %s: Delete says exited at %s, Wait %s", id, del.ExitTime(), r.Exit.ExitTime())
				}
				if at := exitEvent(t, id, "").ExitedAt.AsTime(); !at.Equal(r.Exit.ExitTime()) {
					t.Errorf("task %s: TaskExit says exited at %s, Wait %s", id, at, r.Exit.ExitTime())
				}
				// A process that exits at once still has its TaskStart first.
				events.waitTopics(t, id, "/tasks/create", "/tasks/start", "/tasks/exit:"+id, "/tasks/delete")
				e.removeContainer(t, c)
			}

			id := "times-exec-" + shortRuntime(runtime)
			c := e.newContainer(t, id, runtime, oci.WithProcessArgs("sleep", "1000"))
			task, _ := e.newTask(t, c)
			e.start(t, task)
			for i := 0; i < execs; i++ {
				execID := fmt.Sprintf("x%d", i)
				r := e.runExec(t, task, execID, []string{"true"})
				check(t, "exec "+execID, r)
				if at := exitEvent(t, id, execID).ExitedAt.AsTime(); !at.Equal(r.Exit.ExitTime()) {
					t.Errorf("exec %s: TaskExit says exited at %s, Wait %s", execID, at, r.Exit.ExitTime())
				}
			}
		})
	}
}

// TestGoClientShimCgroup: runc's ShimCgroup option puts the shim into that
// cgroup, as runc's shim does.
func TestGoClientShimCgroup(t *testing.T) {
	e := newGoClientEnv(t, "")
	for _, runtime := range []string{runcRuntime, kataRuntime} {
		t.Run(shortRuntime(runtime), func(t *testing.T) {
			path := fmt.Sprintf("/vmpod-test-shim-%s-%d", shortRuntime(runtime), os.Getpid())
			cg, err := hostcgroup.Create(path)
			if err != nil {
				require.Missingf(t, "cannot create cgroup %s here: %v", path, err)
			}
			// Registered first: runs after the container is gone.
			t.Cleanup(func() {
				ctx, cancel := e.ctx(30 * time.Second)
				defer cancel()
				if err := cg.Delete(ctx); err != nil {
					t.Errorf("removing the shim cgroup: %v", err)
				}
			})
			id := "shimcg-" + shortRuntime(runtime)
			c := e.newContainerWithRuntime(t, id, runtime, &options.Options{ShimCgroup: path}, oci.WithProcessArgs("sleep", "1000"))
			task, _ := e.newTask(t, c)
			shims := harness.PidsWith(t, "containerd-shim-", "-id "+id+" ")
			if len(shims) != 1 {
				t.Fatalf("want one shim of %s, found pids %v", id, shims)
			}
			assertInCgroup(t, shims[0], path)
			ctx, cancel := e.ctx(time.Minute)
			defer cancel()
			if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
				t.Fatal(err)
			}
			e.removeContainer(t, c)
		})
	}
}

// assertInCgroup checks /proc/<pid>/cgroup: every v1 hierarchy (on a v1 or
// hybrid host), or the unified one (v2 host), names path.
func assertInCgroup(t *testing.T, pid int, path string) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var v1, v2 []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" {
			v2 = append(v2, line)
		} else if f[1] != "" { // a named hierarchy without controllers counts too
			v1 = append(v1, line)
		}
	}
	lines := v1
	if len(v1) == 0 {
		lines = v2
	}
	if len(lines) == 0 {
		t.Fatalf("no cgroup of pid %d:\n%s", pid, data)
	}
	for _, line := range lines {
		if !strings.HasSuffix(line, ":"+path) {
			t.Errorf("shim (pid %d) is in %q, want cgroup %s", pid, line, path)
		}
	}
}

func unixSignalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return fmt.Sprintf("signal %d", int(sig))
}
