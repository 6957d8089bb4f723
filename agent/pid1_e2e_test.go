package agent_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/internal/testrootfs"
	agentpb "github.com/vmpod/vmpod/proto"
)

// TestAgentAsPID1 runs the agent as PID 1 of new pid, mount and UTS
// namespaces, as in a guest: it must set up the kernel file systems (in
// its private mount namespace), serve, and "power off" when it stops —
// which in a child pid namespace ends that namespace, not the machine.
func TestAgentAsPID1(t *testing.T) {
	if os.Getuid() != 0 {
		require.Missing(t, "needs root for namespaces")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		require.Missing(t, "unshare (util-linux) not installed")
	}
	bin := testbin.Agent(t)
	// Not under /tmp, which the agent covers with a tmpfs.
	rootfsDir, err := os.MkdirTemp("/var/tmp", "vmpod-pid1-rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rootfsDir) })
	rootfs := filepath.Join(rootfsDir, "rootfs")
	if err := testrootfs.Busybox(rootfs); err != nil {
		if errors.Is(err, testrootfs.ErrNoBusybox) {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// An abstract socket: the agent mounts a tmpfs over /tmp and /run in
	// its mount namespace, so a path there would be invisible to the test.
	sock := fmt.Sprintf("@vmpod-agent-pid1-test-%d", os.Getpid())
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount", "--propagation", "private", "--uts", "--ipc",
		bin, "--listen", "unix://"+sock, "--stdio-listen", "unix://"+sock+".stdio", "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when cmd.ProcessState is set
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", b)
		}
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	var conn net.Conn
	deadline := time.Now().Add(15 * time.Second)
	for {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent as PID 1 never listened: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	client := agentpb.NewAgentClient(tc)
	ctx := ctxT(t, 20*time.Second)

	gd, err := client.GuestDetails(ctx, &agentpb.GuestDetailsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if gd.CgroupMode != "v2" {
		t.Errorf("cgroup mode %q: PID 1 must mount cgroup2 on /sys/fs/cgroup", gd.CgroupMode)
	}
	if _, err := client.SetHostname(ctx, &agentpb.SetHostnameRequest{Hostname: "vmpod-pid1-test"}); err != nil {
		t.Errorf("set hostname in its own UTS namespace: %v", err)
	}

	testContainerOnCgroup2(t, client, sock+".stdio", rootfs)

	agent := childOf(t, cmd.Process.Pid)
	if err := unix.Kill(agent, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		st := cmd.ProcessState
		// reboot(POWER_OFF) in a child pid namespace kills its init with
		// SIGINT; unshare passes that on.
		ws := st.Sys().(syscall.WaitStatus)
		if !(ws.Signaled() && ws.Signal() == syscall.SIGINT) && ws.ExitStatus() != 128+int(syscall.SIGINT) {
			t.Errorf("namespace ended with %v; want the SIGINT of a pid-namespace power-off", st)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent as PID 1 did not power off after SIGTERM")
	}
	b, _ := os.ReadFile(logPath)
	if !strings.Contains(string(b), "powering off") {
		t.Errorf("agent log does not mention powering off:\n%s", b)
	}
}

// testContainerOnCgroup2 runs a container under the PID-1 agent, whose
// libcontainer sees the cgroup v2 hierarchy it mounted (without controllers
// on a hybrid host), as in the guest.
func testContainerOnCgroup2(t *testing.T, client agentpb.AgentService, stdioSock, rootfs string) {
	ctx := ctxT(t, 30*time.Second)
	id := fmt.Sprintf("pid1-%d", os.Getpid())
	_, err := client.CreateContainer(ctx, &agentpb.CreateContainerRequest{
		ContainerId: id, Spec: mustJSON(t, spec("echo", "hello")), Rootfs: &agentpb.Rootfs{Path: rootfs},
	})
	if err != nil {
		t.Fatalf("create on cgroup v2: %v", err)
	}
	if _, err := client.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, stdio: stdioSock}
	out := e.readAll(id, "", false)
	if string(out) != "hello\n" {
		t.Errorf("stdout %q", out)
	}
	if w, err := client.WaitProcess(ctx, &agentpb.ProcessRequest{ContainerId: id}); err != nil || w.ExitStatus != 0 {
		t.Errorf("wait: %v %v", w, err)
	}
	if _, err := client.RemoveContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	// The agent's cgroup2 mount is the host's unified hierarchy.
	for _, d := range []string{"/sys/fs/cgroup/unified/vmpod/" + id, "/sys/fs/cgroup/vmpod/" + id} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s remains after RemoveContainer", d)
		}
	}
}

// childOf returns the only child of pid, waiting for it to appear.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if fields := strings.Fields(string(b)); len(fields) > 0 {
				child, _ := strconv.Atoi(fields[0])
				return child
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has no child", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
