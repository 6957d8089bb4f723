package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vmpod/vmpod/agent"
	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/internal/testrootfs"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/stdiostream"
)

func TestMain(m *testing.M) {
	code := testbin.Run(m)
	// The agent runs these tests' containers on the host, below its
	// cgroup parent; libcontainer leaves the parent, as runc does. Remove
	// it when nothing else is in it.
	if g, err := hostcgroup.Open(agent.DefaultCgroupParent); err == nil {
		for _, dir := range g.Dirs() {
			_ = os.Remove(dir)
		}
	}
	os.Exit(code)
}

// env is one running agent and a client for it.
type env struct {
	t        testing.TB
	client   agentpb.AgentService
	stdio    string // the agent's stdio stream socket
	rootfs   string
	prefix   string // makes container ids unique on the machine
	agentPid int
}

// startAgent runs the real static agent binary on a Unix socket.
func startAgent(t testing.TB) *env {
	t.Helper()
	if os.Getuid() != 0 {
		require.Missing(t, "the agent runs containers: needs root")
	}
	rootfs := testrootfs.ForTest(t)
	bin := testbin.Agent(t)
	dir := t.TempDir()
	// Registered first, so that it runs after the agent is stopped.
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir, rootfs}})

	sock := filepath.Join(dir, "agent.sock")
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	stdioSock := filepath.Join(dir, "stdio.sock")
	cmd := exec.Command(bin, "--listen", "unix://"+sock, "--stdio-listen", "unix://"+stdioSock, "--state-dir", filepath.Join(dir, "state"), "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("agent did not stop on SIGTERM")
		}
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", b)
		}
	})

	var conn net.Conn
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never listened on %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc := ttrpc.NewClient(conn)
	t.Cleanup(func() { tc.Close() })
	return &env{t: t, client: agentpb.NewAgentClient(tc), stdio: stdioSock, rootfs: rootfs, prefix: fmt.Sprintf("e2e%d-", os.Getpid()), agentPid: cmd.Process.Pid}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// spec is runc's default spec running args, without a terminal.
func spec(args ...string) *specs.Spec {
	s := specconv.Example()
	s.Process.Terminal = false
	s.Process.Args = args
	s.Root.Readonly = false
	s.Hostname = "e2e"
	return s
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// create creates a container and, when start is set, starts it.
func (e *env) create(id string, s *specs.Spec, stdin, start bool) {
	e.t.Helper()
	ctx := ctxT(e.t, 20*time.Second)
	_, err := e.client.CreateContainer(ctx, &agentpb.CreateContainerRequest{
		ContainerId: id, Spec: mustJSON(e.t, s), Rootfs: &agentpb.Rootfs{Path: e.rootfs}, Stdin: stdin,
	})
	if err != nil {
		e.t.Fatalf("create %s: %v", id, err)
	}
	if start {
		if _, err := e.client.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
			e.t.Fatalf("start %s: %v", id, err)
		}
	}
}

// attach opens a stdio stream of a process, as the shim does.
func (e *env) attach(id, execID string, kind stdiostream.Kind) (net.Conn, error) {
	ctx := ctxT(e.t, 10*time.Second)
	c, err := net.Dial("unix", e.stdio)
	if err != nil {
		return nil, err
	}
	if err := stdiostream.Attach(ctx, c, stdiostream.Header{Kind: kind, ContainerID: id, ExecID: execID}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readAll reads an output stream until EOF.
func (e *env) readAll(id, execID string, stderr bool) []byte {
	e.t.Helper()
	kind := stdiostream.Stdout
	if stderr {
		kind = stdiostream.Stderr
	}
	c, err := e.attach(id, execID, kind)
	if err != nil {
		e.t.Fatalf("attach %s of %s/%s: %v", kind, id, execID, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	out, err := io.ReadAll(c)
	if err != nil {
		e.t.Fatalf("read %s of %s/%s: %v", kind, id, execID, err)
	}
	return out
}

// writeStdin sends data to a process's stdin and ends it, waiting for the
// agent to close the stream.
func (e *env) writeStdin(id, execID string, data []byte) {
	e.t.Helper()
	c, err := e.attach(id, execID, stdiostream.Stdin)
	if err != nil {
		e.t.Fatalf("attach stdin of %s/%s: %v", id, execID, err)
	}
	defer c.Close()
	if _, err := c.Write(data); err != nil {
		e.t.Fatalf("write stdin of %s/%s: %v", id, execID, err)
	}
	_ = c.(*net.UnixConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		e.t.Fatalf("end stdin of %s/%s: %v", id, execID, err)
	}
}

func (e *env) wait(id, execID string) uint32 {
	e.t.Helper()
	r, err := e.client.WaitProcess(ctxT(e.t, 30*time.Second), &agentpb.ProcessRequest{ContainerId: id, ExecId: execID})
	if err != nil {
		e.t.Fatalf("wait %s/%s: %v", id, execID, err)
	}
	if r.ExitedAtUnixNano == 0 {
		e.t.Errorf("wait %s/%s: no exit time", id, execID)
	}
	return r.ExitStatus
}

func (e *env) remove(id string) {
	e.t.Helper()
	if _, err := e.client.RemoveContainer(ctxT(e.t, 40*time.Second), &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		e.t.Fatalf("remove %s: %v", id, err)
	}
	if dirs := cgroupDirs(id); len(dirs) > 0 {
		e.t.Errorf("container %s removed, its cgroups remain: %v", id, dirs)
	}
}

// cgroupDirs lists the cgroup directories of container id, v1 and v2.
func cgroupDirs(id string) []string {
	var out []string
	for _, pattern := range []string{"/sys/fs/cgroup/*/vmpod/" + id, "/sys/fs/cgroup/vmpod/" + id} {
		m, _ := filepath.Glob(pattern)
		out = append(out, m...)
	}
	return out
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Errorf("%s: got %v (%v), want %v", what, got, err, code)
	}
}

func TestAgent(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t, 60*time.Second)

	check, err := e.client.Check(ctx, &agentpb.CheckRequest{})
	if err != nil || check.KernelRelease == "" {
		t.Fatalf("check: %v %v", check, err)
	}

	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *env, context.Context)
	}{
		{"echo", testEcho},
		{"exit codes", testExitCodes},
		{"exec", testExec},
		{"stdin", testStdin},
		{"tty", testTTY},
		{"oom", testOOM},
		{"large output", testLargeOutput},
		{"bad input", testBadInput},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			tc.fn(t, e, ctx)
		})
	}
}

func testEcho(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "echo"
	e.create(id, spec("echo", "hello"), false, true)
	if out := e.readAll(id, "", false); string(out) != "hello\n" {
		t.Errorf("stdout %q, want %q", out, "hello\n")
	}
	if st := e.wait(id, ""); st != 0 {
		t.Errorf("exit status %d, want 0", st)
	}
	if st := e.wait(id, ""); st != 0 { // again, after the exit
		t.Errorf("second wait: exit status %d, want 0", st)
	}
	e.remove(id)
}

func testExitCodes(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "exit3"
	e.create(id, spec("sh", "-c", "exit 3"), false, true)
	if st := e.wait(id, ""); st != 3 {
		t.Errorf("exit status %d, want 3", st)
	}
	_, err := e.client.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: id, Signal: 9})
	wantCode(t, "signal an exited process", err, codes.FailedPrecondition)
	if err != nil && !strings.Contains(err.Error(), id) {
		t.Errorf("error %q does not name container %s", err, id)
	}
	e.remove(id)

	id = e.prefix + "killed"
	e.create(id, spec("sleep", "100"), false, true)
	if _, err := e.client.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: id, Signal: uint32(unix.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if st := e.wait(id, ""); st != 137 {
		t.Errorf("exit status %d, want 137", st)
	}
	e.remove(id)
}

func testExec(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "exec"
	e.create(id, spec("sleep", "100"), false, true)
	p := spec("id", "-u").Process
	p.User = specs.User{UID: 1000, GID: 1000}
	if _, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "idu", Process: mustJSON(t, p)}); err != nil {
		t.Fatal(err)
	}
	if out := e.readAll(id, "idu", false); string(out) != "1000\n" {
		t.Errorf("id -u as 1000: %q", out)
	}
	if st := e.wait(id, "idu"); st != 0 {
		t.Errorf("exec exit status %d", st)
	}
	_, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "idu", Process: mustJSON(t, p)})
	wantCode(t, "duplicate exec id", err, codes.AlreadyExists)

	p = spec("sh", "-c", "exit 7").Process
	if _, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "seven", Process: mustJSON(t, p)}); err != nil {
		t.Fatal(err)
	}
	if st := e.wait(id, "seven"); st != 7 {
		t.Errorf("exec exit status %d, want 7", st)
	}

	// Pause, list, resume.
	if _, err := e.client.PauseContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "frozen", Process: mustJSON(t, p)})
	wantCode(t, "exec into a paused container", err, codes.FailedPrecondition)
	list, err := e.client.ListProcesses(ctx, &agentpb.ContainerRequest{ContainerId: id})
	if err != nil || len(list.Processes) != 1 || list.Processes[0].ExecId != "" {
		t.Errorf("processes of a paused container with one process: %v %v", list, err)
	}
	if _, err := e.client.ResumeContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.ResumeContainer(ctx, &agentpb.ContainerRequest{ContainerId: id})
	wantCode(t, "resume a running container", err, codes.FailedPrecondition)

	// Stats.
	st, err := e.client.StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	if st.Memory.GetUsageBytes() == 0 || st.Pids.GetCurrent() < 1 {
		t.Errorf("stats: memory usage %d, pids %d", st.Memory.GetUsageBytes(), st.Pids.GetCurrent())
	}
	// Update.
	res := `{"pids":{"limit":100},"memory":{"limit":67108864}}`
	if _, err := e.client.UpdateContainer(ctx, &agentpb.UpdateContainerRequest{ContainerId: id, Resources: []byte(res)}); err != nil {
		t.Errorf("update: %v", err)
	} else if st, err := e.client.StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil || st.Pids.GetLimit() != 100 {
		t.Errorf("after update: pids limit %d, %v", st.Pids.GetLimit(), err)
	}
	// Exec after update still works, and exec signals.
	p = spec("sleep", "100").Process
	if _, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "sleeper", Process: mustJSON(t, p)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: id, ExecId: "sleeper", Signal: uint32(unix.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	if st := e.wait(id, "sleeper"); st != 128+uint32(unix.SIGTERM) {
		t.Errorf("exec killed by SIGTERM: status %d", st)
	}
	if _, err := e.client.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: id, Signal: uint32(unix.SIGKILL), All: true}); err != nil {
		t.Fatal(err)
	}
	if st := e.wait(id, ""); st != 137 {
		t.Errorf("after kill --all: status %d", st)
	}
	e.remove(id)
}

func testStdin(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "cat"
	e.create(id, spec("cat"), true, true)
	msg := []byte("ping\nsecond line\n")
	e.writeStdin(id, "", msg)
	if out := e.readAll(id, "", false); !bytes.Equal(out, msg) {
		t.Errorf("cat echoed %q, want %q", out, msg)
	}
	if st := e.wait(id, ""); st != 0 {
		t.Errorf("cat exit status %d", st)
	}
	e.remove(id)
}

func testTTY(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "tty"
	s := spec("sh", "-c", "read line; stty size")
	s.Process.Terminal = true
	e.create(id, s, true, true)
	if _, err := e.client.ResizeTty(ctx, &agentpb.ResizeTtyRequest{ContainerId: id, Rows: 40, Columns: 100}); err != nil {
		t.Fatal(err)
	}
	e.writeStdin(id, "", []byte("go\n"))
	out := e.readAll(id, "", false)
	if !strings.Contains(string(out), "40 100") {
		t.Errorf("stty size printed %q, want 40 100", out)
	}
	if _, err := e.attach(id, "", stdiostream.Stderr); !errors.Is(err, stdiostream.ErrNoStream) {
		t.Errorf("attach stderr of a terminal: %v, want %v", err, stdiostream.ErrNoStream)
	}
	e.wait(id, "")
	_, err := e.client.ResizeTty(ctx, &agentpb.ResizeTtyRequest{ContainerId: id, Rows: 1, Columns: 1})
	wantCode(t, "resize an exited process", err, codes.FailedPrecondition)
	e.remove(id)
}

func testOOM(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "oom"
	s := spec("sh", "-c", "x=a; while true; do x=$x$x; done")
	limit := int64(16 << 20)
	s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	e.create(id, s, false, true)
	ev, err := e.client.GetOOMEvent(ctxT(t, 30*time.Second), &agentpb.GetOOMEventRequest{})
	if err != nil || ev.ContainerId != id {
		t.Errorf("OOM event: %v %v", ev, err)
	}
	if st := e.wait(id, ""); st != 137 {
		t.Errorf("OOM-killed exit status %d, want 137", st)
	}
	st, err := e.client.StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: id})
	if err != nil || st.Memory.GetOomKillEvents() == 0 || st.Memory.GetLimitBytes() != uint64(limit) {
		t.Errorf("stats after the OOM kill: %v, %v", st.GetMemory(), err)
	}
	e.remove(id)
}

func testLargeOutput(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "large"
	e.create(id, spec("sh", "-c", "head -c 8388608 /dev/urandom > /tmp/r; cat /tmp/r; sha256sum /tmp/r >&2; rm /tmp/r"), false, true)
	var errOut []byte
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); errOut = e.readAll(id, "", true) }()
	out := e.readAll(id, "", false)
	wg.Wait()
	sum := sha256.Sum256(out)
	if len(out) != 8<<20 || !strings.HasPrefix(string(errOut), hex.EncodeToString(sum[:])) {
		t.Errorf("got %d bytes with sha256 %x; the container wrote 8388608 bytes: %s", len(out), sum, errOut)
	}
	if st := e.wait(id, ""); st != 0 {
		t.Errorf("exit status %d", st)
	}
	e.remove(id)
}

func testBadInput(t *testing.T, e *env, ctx context.Context) {
	id := e.prefix + "bad"
	create := func(id string, specJSON []byte, rootfs string) error {
		_, err := e.client.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: id, Spec: specJSON, Rootfs: &agentpb.Rootfs{Path: rootfs}})
		return err
	}
	good := mustJSON(t, spec("sleep", "100"))
	noProcess := spec("true")
	noProcess.Process = nil
	relCwd := spec("true")
	relCwd.Process.Cwd = "tmp"

	for _, c := range []struct {
		name   string
		id     string
		spec   []byte
		rootfs string
	}{
		{"invalid id", "../x", good, e.rootfs},
		{"invalid JSON", id, []byte("{"), e.rootfs},
		{"oversize spec", id, append(good, bytes.Repeat([]byte(" "), 1<<20)...), e.rootfs},
		{"no process", id, mustJSON(t, noProcess), e.rootfs},
		{"relative cwd", id, mustJSON(t, relCwd), e.rootfs},
		{"relative rootfs", id, good, "rootfs"},
		{"escaping rootfs", id, good, e.rootfs + "/../rootfs"},
		{"missing rootfs", id, good, ""},
	} {
		wantCode(t, c.name, create(c.id, c.spec, c.rootfs), codes.InvalidArgument)
	}
	// No state was left by the failures: the id is still free.
	if err := create(id, good, e.rootfs); err != nil {
		t.Fatalf("create after failed creates: %v", err)
	}
	wantCode(t, "duplicate container", create(id, good, e.rootfs), codes.AlreadyExists)
	if _, err := e.client.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("the first container broke: %v", err)
	}

	_, err := e.client.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: "nope"})
	wantCode(t, "start unknown container", err, codes.NotFound)
	_, err = e.client.WaitProcess(ctx, &agentpb.ProcessRequest{ContainerId: id, ExecId: "nope"})
	wantCode(t, "wait unknown exec", err, codes.NotFound)
	_, err = e.client.StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: "nope"})
	wantCode(t, "stats of unknown container", err, codes.NotFound)
	if _, err := e.attach("nope", "", stdiostream.Stdout); !errors.Is(err, stdiostream.ErrNoProcess) {
		t.Errorf("attach stdout of an unknown container: %v", err)
	}
	_, err = e.client.ResizeTty(ctx, &agentpb.ResizeTtyRequest{ContainerId: id, Rows: 10, Columns: 10})
	wantCode(t, "resize without a terminal", err, codes.FailedPrecondition)
	_, err = e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "x", Process: []byte(`{"args":["true"]}`)})
	wantCode(t, "exec without cwd", err, codes.InvalidArgument)
	if _, err := e.attach(id, "", stdiostream.Stdin); !errors.Is(err, stdiostream.ErrNoStream) {
		t.Errorf("attach stdin of a process without stdin: %v", err)
	}
	_, err = e.client.UpdateContainer(ctx, &agentpb.UpdateContainerRequest{ContainerId: id, Resources: []byte("[")})
	wantCode(t, "update with invalid JSON", err, codes.InvalidArgument)
	_, err = e.client.SetHostname(ctx, &agentpb.SetHostnameRequest{Hostname: "bad host"})
	wantCode(t, "invalid hostname", err, codes.InvalidArgument)
	_, err = e.client.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: id, Signal: 99})
	wantCode(t, "invalid signal", err, codes.InvalidArgument)

	e.remove(id)
	if _, err := e.attach(id, "", stdiostream.Stdout); !errors.Is(err, stdiostream.ErrNoProcess) {
		t.Errorf("attach stdout of a removed container: %v", err)
	}
	_, err = e.client.RemoveContainer(ctx, &agentpb.ContainerRequest{ContainerId: id})
	wantCode(t, "remove twice", err, codes.NotFound)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}

// TestAgentLifecycle covers sandbox set-up, rootfs mounts, orphan reaping,
// terminals for execs, and removal in every state.
func TestAgentLifecycle(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t, 60*time.Second)
	dir := t.TempDir()

	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *env, context.Context, string)
	}{
		{"sandbox", testSandbox},
		{"rootfs mounts", testRootfsMounts},
		{"orphans are reaped", testOrphansAreReaped},
		{"exec terminal", testExecTerminal},
		{"remove in every state", testRemoveInEveryState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			tc.fn(t, e, ctx, dir)
		})
	}
}

func testSandbox(t *testing.T, e *env, ctx context.Context, dir string) {
	mnt := filepath.Join(dir, "sandbox-tmpfs")
	req := &agentpb.CreateSandboxRequest{
		SandboxId: "pod1", Hostname: "pod1",
		Dns:    &agentpb.DNS{Nameservers: []string{"10.0.0.10"}, Searches: []string{"svc.local"}},
		Mounts: []*agentpb.Mount{{Type: "tmpfs", Source: "tmpfs", Target: mnt, Options: []string{"size=1m", "nosuid"}}},
	}
	if _, err := e.client.CreateSandbox(ctx, req); err != nil {
		t.Fatal(err)
	}
	if !isMountPoint(t, mnt) {
		t.Errorf("sandbox mount %s missing", mnt)
	}
	_, err := e.client.CreateSandbox(ctx, req)
	wantCode(t, "second sandbox", err, codes.AlreadyExists)
	gd, err := e.client.GuestDetails(ctx, &agentpb.GuestDetailsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if gd.Cpus == 0 || gd.MemoryBytes == 0 || gd.AgentRssBytes == 0 || gd.BootId == "" || gd.KernelRelease == "" || gd.CgroupMode == "" {
		t.Errorf("guest details incomplete: %v", gd)
	}
	if _, err := e.client.DestroySandbox(ctx, &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(t, mnt) {
		t.Errorf("sandbox mount %s remains after DestroySandbox", mnt)
	}
	_, err = e.client.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "pod2", Mounts: []*agentpb.Mount{{Type: "tmpfs", Target: "relative"}}})
	wantCode(t, "relative sandbox mount", err, codes.InvalidArgument)
}

func testRootfsMounts(t *testing.T, e *env, ctx context.Context, dir string) {
	id := e.prefix + "mounted"
	target := filepath.Join(dir, "rootfs-bind")
	s := spec("cat", "/etc/hostname")
	_, err := e.client.CreateContainer(ctx, &agentpb.CreateContainerRequest{
		ContainerId: id, Spec: mustJSON(t, s),
		Rootfs: &agentpb.Rootfs{Path: target, Mounts: []*agentpb.Mount{{Source: e.rootfs, Target: target, Options: []string{"rbind"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if out := e.readAll(id, "", false); string(out) != "busybox\n" {
		t.Errorf("read %q through the bind-mounted rootfs", out)
	}
	e.wait(id, "")
	e.remove(id)
	if isMountPoint(t, target) {
		t.Errorf("rootfs mount %s remains after RemoveContainer", target)
	}
	// A failed create undoes the rootfs mounts.
	_, err = e.client.CreateContainer(ctx, &agentpb.CreateContainerRequest{
		ContainerId: id, Spec: mustJSON(t, spec("true")),
		Rootfs: &agentpb.Rootfs{Path: target + "/nonexistent", Mounts: []*agentpb.Mount{{Source: e.rootfs, Target: target, Options: []string{"rbind"}}}},
	})
	wantCode(t, "rootfs that is not a directory", err, codes.InvalidArgument)
	if isMountPoint(t, target) {
		t.Errorf("rootfs mount %s remains after a failed create", target)
	}
}

func testOrphansAreReaped(t *testing.T, e *env, ctx context.Context, dir string) {
	id := e.prefix + "orphan"
	s := spec("sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!")
	// Without a pid namespace, the orphaned sleep is re-parented to the
	// agent, the subreaper, which must reap it.
	var nss []specs.LinuxNamespace
	for _, ns := range s.Linux.Namespaces {
		if ns.Type != specs.PIDNamespace {
			nss = append(nss, ns)
		}
	}
	s.Linux.Namespaces = nss
	e.create(id, s, false, true)
	orphan := strings.TrimSpace(string(e.readAll(id, "", false)))
	e.wait(id, "")
	if ppid := parentOf(orphan); ppid != e.agentPid {
		t.Errorf("orphan %s has parent %d, want the agent %d", orphan, ppid, e.agentPid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + orphan); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %s was not reaped (zombies of the agent: %v)", orphan, agentZombies(t, e))
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.remove(id)
}

func testExecTerminal(t *testing.T, e *env, ctx context.Context, dir string) {
	id := e.prefix + "exectty"
	e.create(id, spec("sleep", "100"), false, true)
	p := spec("sh", "-c", "read l; stty size").Process
	p.Terminal = true
	if _, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "tty", Process: mustJSON(t, p), Stdin: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.ResizeTty(ctx, &agentpb.ResizeTtyRequest{ContainerId: id, ExecId: "tty", Rows: 40, Columns: 100}); err != nil {
		t.Fatal(err)
	}
	e.writeStdin(id, "tty", []byte("x\n"))
	if out := e.readAll(id, "tty", false); !strings.Contains(string(out), "40 100") {
		t.Errorf("stty size in an exec printed %q", out)
	}
	if st := e.wait(id, "tty"); st != 0 {
		t.Errorf("exec exit status %d", st)
	}
	// Remove with a running exec: both go.
	p = spec("sleep", "100").Process
	if _, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "sleeper", Process: mustJSON(t, p)}); err != nil {
		t.Fatal(err)
	}
	e.remove(id)
	_, err := e.client.WaitProcess(ctx, &agentpb.ProcessRequest{ContainerId: id, ExecId: "sleeper"})
	wantCode(t, "wait on a removed container", err, codes.NotFound)
}

func testRemoveInEveryState(t *testing.T, e *env, ctx context.Context, dir string) {
	created := e.prefix + "created"
	e.create(created, spec("echo", "never"), false, false)
	paused := e.prefix + "paused"
	e.create(paused, spec("sleep", "100"), false, true)
	if _, err := e.client.PauseContainer(ctx, &agentpb.ContainerRequest{ContainerId: paused}); err != nil {
		t.Fatal(err)
	}
	running := e.prefix + "running"
	e.create(running, spec("sleep", "100"), true, true)
	e.remove(created)
	e.remove(paused)
	e.remove(running)
}

// agentZombies lists the agent's children that exited and were not reaped.
func agentZombies(t *testing.T, e *env) []string {
	t.Helper()
	pid := e.agentPid
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []string
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, child := range strings.Fields(string(b)) {
			stat, err := os.ReadFile("/proc/" + child + "/stat")
			if err != nil {
				continue
			}
			s := string(stat)
			if i := strings.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) && s[i+2] == 'Z' {
				out = append(out, child)
			}
		}
	}
	return out
}

// parentOf returns the parent pid of pid, or -1.
func parentOf(pid string) int {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return -1
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func isMountPoint(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// BenchmarkStdoutStream measures output throughput through a stdio
// stream over a Unix socket: a container writes 64 MiB as fast as it can.
func BenchmarkStdoutStream(b *testing.B) {
	e := startAgent(b)
	const size = 64 << 20
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("%sbench%d", e.prefix, i)
		e.create(id, spec("head", "-c", fmt.Sprint(size), "/dev/zero"), false, true)
		c, err := e.attach(id, "", stdiostream.Stdout)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, c)
		c.Close()
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v; want %d", n, err, size)
		}
		e.wait(id, "")
		e.remove(id)
	}
}
