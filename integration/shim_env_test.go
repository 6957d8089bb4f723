package integration

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"

	"github.com/vmpod/vmpod/integration/harness"
)

// vmpodEnv is a private containerd with the shim of this tree, the busybox
// image, and a vmpod configuration pointing at a freshly built guest.
type vmpodEnv struct {
	t         *testing.T
	c         *harness.Containerd
	image     string
	stateRoot string
	config    string
}

func newVMPodEnv(t *testing.T, extraConfig string) *vmpodEnv {
	t.Helper()
	c, image, stateRoot, cfg := harness.StartVMPod(t, extraConfig)
	return &vmpodEnv{t: t, c: c, image: image, stateRoot: stateRoot, config: cfg}
}

// ctr runs ctr with a deadline and fails the test on error.
func (e *vmpodEnv) ctr(args ...string) string {
	e.t.Helper()
	out, _, err := e.ctrErr(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *vmpodEnv) ctrErr(args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return e.c.Ctr(ctx, args...)
}

// run is `ctr run --rm` of the busybox image with the kata runtime.
func (e *vmpodEnv) run(id string, flagsAndArgs ...string) (string, string, error) {
	e.t.Helper()
	var flags, args []string
	for i, a := range flagsAndArgs {
		if a == "--" {
			flags, args = flagsAndArgs[:i], flagsAndArgs[i+1:]
			break
		}
	}
	if flags == nil && args == nil {
		args = flagsAndArgs
	}
	full := append([]string{"run", "--rm", "--runtime", "io.containerd.kata.v2"}, flags...)
	full = append(full, e.image, id)
	return e.ctrErr(append(full, args...)...)
}

func trim(s string) string { return strings.TrimSpace(s) }

// exitCode is the exit status of the ctr command behind err, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// eventLog records `ctr events` while a test runs.
type eventLog struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func (e *vmpodEnv) watchEvents() *eventLog {
	e.t.Helper()
	l := &eventLog{done: make(chan struct{})}
	l.cmd = exec.Command(e.c.Daemon.Ctr, "--address", e.c.Address, "--namespace", harness.Namespace, "events")
	l.cmd.Stdout = l
	if err := l.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { l.cmd.Wait(); close(l.done) }()
	e.t.Cleanup(l.stop)
	// ctr subscribes after it started; give it a moment to be listening.
	time.Sleep(500 * time.Millisecond)
	return l
}

func (l *eventLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *eventLog) stop() {
	l.cmd.Process.Kill()
	<-l.done
}

// topics returns the task topics seen so far for container id, in order,
// with the exec or process id for exits ("/tasks/exit:e1").
func (l *eventLog) topics(id string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		// ctr events: <time> <namespace> <topic> <event JSON>; the time
		// has spaces in it.
		i := strings.Index(line, " /tasks/")
		if i < 0 {
			continue
		}
		f := strings.SplitN(line[i+1:], " ", 2)
		if len(f) < 2 || !strings.Contains(f[1], `"container_id":"`+id+`"`) {
			continue
		}
		topic, rest := f[0], f[1]
		if topic == "/tasks/exit" {
			if i := strings.Index(rest, `"id":"`); i >= 0 {
				topic += ":" + strings.SplitN(rest[i+6:], `"`, 2)[0]
			}
		}
		out = append(out, topic)
	}
	return out
}

// waitTopics polls until want appears in order among id's topics.
func (l *eventLog) waitTopics(t *testing.T, id string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := l.topics(id)
		if isSubsequence(want, got) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("events of %s: %v, want in order %v", id, got, want)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// waitStatus polls `ctr task ls` until task id shows status.
func (e *vmpodEnv) waitStatus(id, status string) {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, _, _ := e.ctrErr("task", "ls")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == id && f[2] == status {
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s never became %s; tasks:\n%s", id, status, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// taskClient connects to the shim of container id directly, for the Task
// API calls ctr 1.6 has no command for (Update).
func (e *vmpodEnv) taskClient(id string) (taskAPI.TaskService, func()) {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.c.State, "io.containerd.runtime.v2.task", harness.Namespace, id, "address"))
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := net.Dial("unix", strings.TrimPrefix(strings.TrimSpace(string(data)), "unix://"))
	if err != nil {
		e.t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	return taskAPI.NewTaskClient(client), func() { client.Close() }
}
