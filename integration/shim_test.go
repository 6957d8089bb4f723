package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vmpod/vmpod/hypervisor/jail"
	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/integration/harness"
)

// cgroupMount is the ctr --mount of the container's cgroup2 at
// /sys/fs/cgroup.
const cgroupMount = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec"

// TestShimRun runs short containers with `ctr run --rm` through the shim,
// one VM each: output, exit codes, process settings, mounts, stdin and a
// memory limit.
func TestShimRun(t *testing.T) {
	e := newVMPodEnv(t, "")

	t.Run("echo", func(t *testing.T) {
		out, _, err := e.run("echo", "echo", "hi")
		if err != nil {
			t.Fatal(err)
		}
		if out != "hi\n" {
			t.Errorf("stdout %q, want %q", out, "hi\n")
		}
		// debug = true: the guest console, with the agent's log, is in
		// containerd's log tagged with the sandbox.
		found := false
		for _, l := range strings.Split(e.c.Logs(), "\n") {
			found = found || strings.Contains(l, "vmpod-agent serving") && strings.Contains(l, "sandbox=echo")
		}
		if !found {
			t.Error("containerd's log has no guest console line of sandbox echo")
		}
	})

	t.Run("guest kernel", func(t *testing.T) {
		release := imagetest.Release(t)
		var host unix.Utsname
		if err := unix.Uname(&host); err != nil {
			t.Fatal(err)
		}
		out, _, err := e.run("uname", "uname", "-r")
		if err != nil {
			t.Fatal(err)
		}
		if trim(out) != release {
			t.Errorf("uname -r in the container = %q, want the guest's %q", trim(out), release)
		}
		if trim(out) == unix.ByteSliceToString(host.Release[:]) {
			t.Errorf("the container sees the host's kernel %q", trim(out))
		}
	})

	t.Run("8 MiB of stdout", func(t *testing.T) {
		const size = 8 << 20
		out, _, err := e.run("stream", "sh", "-c", fmt.Sprintf("yes 0123456789abcdef | head -c %d", size))
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.Repeat([]byte("0123456789abcdef\n"), size/17+1)[:size]
		if !bytes.Equal([]byte(out), want) {
			t.Errorf("stdout: %d bytes, want %d exact bytes", len(out), size)
		}
	})

	t.Run("exit code", func(t *testing.T) {
		_, _, err := e.run("exit3", "sh", "-c", "exit 3")
		if code := exitCode(err); code != 3 {
			t.Errorf("ctr exit code %d (%v), want 3", code, err)
		}
	})

	t.Run("env cwd read-only rootfs", func(t *testing.T) {
		out, _, err := e.run("settings", "--env", "FOO=bar", "--cwd", "/tmp", "--read-only", "--",
			"sh", "-c", `echo "$FOO"; pwd; if touch /probe 2>/dev/null; then echo writable; else echo read-only; fi`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "bar\n/tmp\nread-only\n"; out != want {
			t.Errorf("stdout %q, want %q", out, want)
		}
	})

	t.Run("process start seals the agent without copying it", func(t *testing.T) {
		testSealedInit(t, e)
	})

	t.Run("bind mount", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "in"), []byte("from host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _, err := e.run("bind", "--mount", "type=bind,src="+dir+",dst=/data,options=rbind:rw", "--",
			"sh", "-c", "cat /data/in; echo from guest > /data/out")
		if err != nil {
			t.Fatal(err)
		}
		if out != "from host\n" {
			t.Errorf("container read %q from the bind mount", out)
		}
		if data, err := os.ReadFile(filepath.Join(dir, "out")); err != nil || string(data) != "from guest\n" {
			t.Errorf("host reads %q (%v) from the guest's write", data, err)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, _, err := e.c.CtrStdin(ctx, strings.NewReader("piped through cat\n"),
			"run", "--rm", "--runtime", "io.containerd.kata.v2", e.image, "stdin", "cat")
		if err != nil {
			t.Fatal(err)
		}
		if out != "piped through cat\n" {
			t.Errorf("stdout %q", out)
		}
	})

	t.Run("file log", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ctr.log")
		if _, _, err := e.run("filelog", "--log-uri", "file://"+path, "--", "sh", "-c", "echo out; echo err >&2"); err != nil {
			t.Fatal(err)
		}
		waitFileLines(t, path, "out", "err")
	})

	t.Run("binary log", func(t *testing.T) {
		dir := t.TempDir()
		logPath := filepath.Join(dir, "binary.log")
		// containerd's logging-binary protocol: stdout on fd 3, stderr on
		// fd 4, and closing fd 5 says the logger is ready.
		logger := filepath.Join(dir, "logger")
		script := fmt.Sprintf("#!/bin/sh\nexec 5>&-\ncat <&3 >>%s &\ncat <&4 >>%s\nwait\n", logPath, logPath)
		if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.run("binlog", "--log-uri", "binary://"+logger, "--", "sh", "-c", "echo out; echo err >&2"); err != nil {
			t.Fatal(err)
		}
		waitFileLines(t, logPath, "out", "err")
	})

	t.Run("resources size the VM", func(t *testing.T) {
		// ctr's default spec has no cgroup mount; the shim gives the
		// container a cgroup namespace, so the mount shows its own cgroup.
		out, _, err := e.run("sized", "--memory-limit", "134217728", "--cpus", "1", "--mount", cgroupMount, "--",
			"sh", "-c", "cat /sys/fs/cgroup/memory.max; grep MemTotal /proc/meminfo; nproc")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(out)
		if len(f) != 5 {
			t.Fatalf("unexpected output %q", out)
		}
		if f[0] != "134217728" {
			t.Errorf("memory.max in the container = %q, want 134217728", f[0])
		}
		// 512 MiB by default plus the 128 MiB limit; the kernel keeps some.
		var memKiB int
		fmt.Sscan(f[2], &memKiB)
		if memKiB < 560<<10 || memKiB > 640<<10 {
			t.Errorf("guest MemTotal %d KiB, want a VM of 640 MiB", memKiB)
		}
		// One default vCPU plus one for the quota, no more than the host has.
		if want := fmt.Sprint(min(2, runtime.NumCPU())); f[4] != want {
			t.Errorf("nproc = %s, want %s", f[4], want)
		}
	})
}

// TestShimLongRunning drives one running container (one VM) through exec,
// pause and resume, metrics, process listing, a resource update, a second
// VM beside it, and SIGKILL, and checks the events containerd saw.
func TestShimLongRunning(t *testing.T) {
	e := newVMPodEnv(t, "")
	events := e.watchEvents()

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, _, err := e.run("long", "--memory-limit", "268435456", "--mount", cgroupMount, "--", "sleep", "1000")
		done <- result{out, err}
	}()
	e.waitStatus("long", "RUNNING")

	t.Run("exec", func(t *testing.T) {
		out, _, err := e.ctrErr("task", "exec", "--exec-id", "e1", "long", "sh", "-c", "echo from exec; exit 4")
		if code := exitCode(err); code != 4 {
			t.Errorf("exec exit code %d (%v), want 4", code, err)
		}
		if out != "from exec\n" {
			t.Errorf("exec stdout %q", out)
		}
		events.waitTopics(t, "long", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit:e1")
	})

	t.Run("exec as user 1000", func(t *testing.T) {
		out := e.ctr("task", "exec", "--exec-id", "e2", "--user", "1000", "long", "id", "-u")
		if trim(out) != "1000" {
			t.Errorf("id -u = %q, want 1000", trim(out))
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		e.ctr("task", "pause", "long")
		e.waitStatus("long", "PAUSED")
		e.ctr("task", "resume", "long")
		e.waitStatus("long", "RUNNING")
		events.waitTopics(t, "long", "/tasks/paused", "/tasks/resumed")
	})

	t.Run("metrics and ps", func(t *testing.T) {
		out := e.ctr("task", "metrics", "long")
		usage := ""
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "memory.usage" {
				usage = f[1]
			}
		}
		if usage == "" || usage == "0" {
			t.Errorf("no memory usage in metrics:\n%s", out)
		}
		if !strings.Contains(out, "memory.usage_limit") || !strings.Contains(out, "268435456") {
			t.Errorf("metrics do not show the 256 MiB limit:\n%s", out)
		}
		if ps := e.ctr("task", "ps", "long"); len(strings.Fields(ps)) < 3 {
			t.Errorf("task ps lists no process:\n%s", ps)
		}
	})

	t.Run("update memory limit", func(t *testing.T) {
		client, closeClient := e.taskClient("long")
		defer closeClient()
		limit := int64(201326592)
		res, _ := json.Marshal(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), harness.Namespace), time.Minute)
		defer cancel()
		if _, err := client.Update(ctx, &taskAPI.UpdateTaskRequest{ID: "long", Resources: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: res}}); err != nil {
			t.Fatal(err)
		}
		out := e.ctr("task", "exec", "--exec-id", "e3", "long", "cat", "/sys/fs/cgroup/memory.max")
		if trim(out) != "201326592" {
			t.Errorf("memory.max after update = %q, want 201326592", trim(out))
		}
	})

	t.Run("two VMs", func(t *testing.T) {
		inLong := e.ctr("task", "exec", "--exec-id", "e4", "long", "cat", "/proc/sys/kernel/random/boot_id")
		other, _, err := e.run("other", "cat", "/proc/sys/kernel/random/boot_id")
		if err != nil {
			t.Fatal(err)
		}
		if trim(inLong) == "" || trim(inLong) == trim(other) {
			t.Errorf("boot ids %q and %q: want two different guests", trim(inLong), trim(other))
		}
	})

	t.Run("a stalled reader stalls only its stream", func(t *testing.T) {
		// An exec whose client stops reading: its ctr's stdout is a pipe
		// this test leaves unread, so the fifo, the shim's copy, the
		// vsock credit and the guest pipe fill, and the process blocks.
		// 24 MiB is several times what all of those hold together.
		const stalledSize = 24 << 20
		pattern := func(n int) []byte { return bytes.Repeat([]byte("0123456789abcdef\n"), n/17+1)[:n] }
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, e.c.Daemon.Ctr, "--address", e.c.Address, "--namespace", harness.Namespace,
			"task", "exec", "--exec-id", "stalled", "long", "sh", "-c", fmt.Sprintf("yes 0123456789abcdef | head -c %d", stalledSize))
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = w, &stderr
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()

		// Another process of the pod streams meanwhile, whole and promptly.
		const size = 4 << 20
		start := time.Now()
		out, _, err := e.ctrErr("task", "exec", "--exec-id", "flowing", "long", "sh", "-c", fmt.Sprintf("yes 0123456789abcdef | head -c %d", size))
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal([]byte(out), pattern(size)) {
			t.Errorf("the flowing exec's stdout: %d bytes, want %d exact bytes", len(out), size)
		}
		if took > 45*time.Second {
			t.Errorf("the flowing exec took %v beside a stalled stream", took)
		}
		select {
		case err := <-exited:
			t.Fatalf("the exec nobody read finished (%v) before it was read: its stream did not stall", err)
		default:
		}

		// Reading again resumes the stalled stream, with nothing lost.
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-exited; err != nil {
			t.Fatalf("stalled exec: %v: %s", err, stderr.String())
		}
		if !bytes.Equal(got, pattern(stalledSize)) {
			t.Errorf("the stalled exec's stdout: %d bytes once read, want %d exact bytes", len(got), stalledSize)
		}
	})

	t.Run("exec with stdin", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, _, err := e.c.CtrStdin(ctx, strings.NewReader("into exec\n"), "task", "exec", "--exec-id", "e5", "long", "cat")
		if err != nil {
			t.Fatal(err)
		}
		if out != "into exec\n" {
			t.Errorf("exec cat printed %q", out)
		}
	})

	e.ctr("task", "kill", "--all", "-s", "KILL", "long")
	select {
	case r := <-done:
		if code := exitCode(r.err); code != 137 {
			t.Errorf("ctr run exit code %d (%v), want 137 after SIGKILL", code, r.err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("ctr run did not return after SIGKILL")
	}
	events.waitTopics(t, "long", "/tasks/create", "/tasks/start", "/tasks/exit:long", "/tasks/delete")
}

// TestShimTerminal runs a container on a terminal: the initial size and a
// resize reach the guest's tty.
func TestShimTerminal(t *testing.T) {
	e := newVMPodEnv(t, "")
	master, slave, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	setSize := func(rows, cols uint16) {
		if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
			t.Fatal(err)
		}
	}
	setSize(40, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	script := `stty size; while [ "$(stty size)" = "40 100" ]; do sleep 0.1; done; stty size`
	cmd := exec.CommandContext(ctx, e.c.Daemon.Ctr, "--address", e.c.Address, "--namespace", harness.Namespace,
		"run", "--rm", "-t", "--runtime", "io.containerd.kata.v2", e.image, "tty", "sh", "-c", script)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var (
		mu  sync.Mutex
		out bytes.Buffer
	)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	// Once the first size is printed, resize: ctr forwards SIGWINCH.
	for !strings.Contains(func() string { mu.Lock(); defer mu.Unlock(); return out.String() }(), "40 100") {
		if ctx.Err() != nil {
			t.Fatalf("no initial size on the terminal; output %q", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	setSize(50, 120)
	cmd.Process.Signal(unix.SIGWINCH)
	if err := cmd.Wait(); err != nil {
		t.Errorf("ctr run -t: %v", err)
	}
	master.Close()
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(out.String(), "50 120") {
		t.Errorf("terminal output %q does not show the resize to 50x120", out.String())
	}
}

// TestShimOOM fills a container's memory limit: containerd sees TaskOOM
// before TaskExit.
func TestShimOOM(t *testing.T) {
	e := newVMPodEnv(t, "")
	events := e.watchEvents()
	_, _, err := e.run("oom", "--memory-limit", "33554432", "--", "sh", "-c", "tail /dev/zero")
	if code := exitCode(err); code != 137 {
		t.Errorf("ctr run exit code %d (%v), want 137 after the OOM kill", code, err)
	}
	events.waitTopics(t, "oom", "/tasks/start", "/tasks/oom", "/tasks/exit:oom", "/tasks/delete")
}

// TestShimBootFailures: a missing kernel and a guest that never answers
// fail `ctr run` with a message naming the cause, and leave nothing.
func TestShimBootFailures(t *testing.T) {
	e := newVMPodEnv(t, "")
	dir := t.TempDir()
	kernel, initrd := harness.GuestImage(t)

	missing := filepath.Join(dir, "no-such-vmlinuz")
	noKernel := filepath.Join(dir, "nokernel.toml")
	if err := os.WriteFile(noKernel, []byte(harness.VMPODConfig(missing, initrd, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	// An initrd whose /init is busybox's init: the guest boots and never
	// serves the agent.
	silent, err := image.BuildInitrd(image.Options{Init: "/bin/busybox", Output: filepath.Join(dir, "silent.img")})
	if err != nil {
		t.Fatal(err)
	}
	silentCfg := filepath.Join(dir, "silent.toml")
	if err := os.WriteFile(silentCfg, []byte(harness.VMPODConfig(kernel, silent.Path, "[agent]\ndial_timeout = \"5s\"\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, config, want string
	}{
		{"missing kernel", noKernel, missing},
		{"agent never answers", silentCfg, "did not answer within 5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(tc.name, " ", "-")
			_, _, err := e.run(id, "--runtime-config-path", tc.config, "--", "echo", "hi")
			if err == nil {
				t.Fatal("container ran")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
			// A run that failed to start leaves the container record.
			e.ctrErr("containers", "delete", id)
			e.c.AssertClean(t)
		})
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

// TestShimCrashCleanup: a VM that dies under a running container ends the
// task, and a shim killed outright is cleaned up by containerd's `shim
// delete`; either way nothing is left (no QEMU, virtiofsd, mount or state).
func TestShimCrashCleanup(t *testing.T) {
	e := newVMPodEnv(t, "")

	t.Run("VM dies", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, _, err := e.run("vmdies", "sleep", "1000")
			done <- err
		}()
		e.waitStatus("vmdies", "RUNNING")
		qemu := harness.PidsWith(t, "vmpod-vmdies", e.stateRoot)
		if len(qemu) != 1 {
			t.Fatalf("want one QEMU of vmdies, found pids %v", qemu)
		}
		unix.Kill(qemu[0], unix.SIGKILL)
		select {
		case err := <-done:
			if err == nil {
				t.Error("ctr run succeeded although the VM died")
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("ctr run did not return after the VM died")
		}
		e.c.AssertClean(t)
	})

	t.Run("shim killed", func(t *testing.T) {
		e.ctr("run", "-d", "--runtime", "io.containerd.kata.v2", e.image, "shimdies", "sleep", "1000")
		e.waitStatus("shimdies", "RUNNING")
		shim := harness.PidsWith(t, "containerd-shim-kata-v2", "-id shimdies")
		if len(shim) != 1 {
			t.Fatalf("want one shim of shimdies, found pids %v", shim)
		}
		qemu := harness.PidsWith(t, "qemu-system", "shimdies")
		if len(qemu) != 1 {
			t.Fatalf("want one QEMU of shimdies, found pids %v", qemu)
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu[0]))
		var uid uint32
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "Uid:") {
				fmt.Sscan(strings.TrimPrefix(l, "Uid:"), &uid)
			}
		}
		lock := filepath.Join(jail.DefaultLockDir, fmt.Sprintf("%d.lock", uid))
		if _, err := os.Stat(lock); uid == 0 || err != nil {
			t.Fatalf("QEMU runs as uid %d, lock %s: %v; want a jail uid with its lock", uid, lock, err)
		}
		unix.Kill(shim[0], unix.SIGKILL)
		// containerd runs `containerd-shim-kata-v2 delete` and drops the
		// task; the container record stays for the user to remove.
		deadline := time.Now().Add(time.Minute)
		for {
			out, _, _ := e.ctrErr("task", "ls", "-q")
			if !strings.Contains(out, "shimdies") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task still listed after its shim died:\n%s", out)
			}
			time.Sleep(200 * time.Millisecond)
		}
		e.ctr("containers", "delete", "shimdies")
		e.c.AssertClean(t)
		if _, err := os.Stat(lock); !os.IsNotExist(err) {
			t.Errorf("jail lock %s of the dead shim's QEMU left behind: %v", lock, err)
		}
	})
}

// waitFileLines waits until the file at path holds every one of lines.
func waitFileLines(t *testing.T, path string, lines ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		got := strings.Fields(string(data))
		missing := false
		for _, l := range lines {
			found := false
			for _, g := range got {
				found = found || g == l
			}
			missing = missing || !found
		}
		if !missing {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s holds %q, want lines %v", path, data, lines)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Lines of libcontainer's debug log (kept "for tests" in runc) that say how
// it protected its init binary, the agent, before starting a process: a
// read-only overlayfs view of it (no copy), or a copy of all 9 MB of it.
const (
	sealedByOverlay = "runc exeseal: using overlayfs for sealed /proc/self/exe"
	sealedByCopy    = "falling back to making a temporary copy"
	copyingBinary   = "cloning /proc/self/exe binary"
)

// testSealedInit checks, in a guest, that starting a container and an exec
// re-executes the agent through exeseal's overlayfs view and never copies
// it (docs/performance.md, "Exec and process start"): the copy is what
// libcontainer falls back to when the guest cannot mount that overlay, and
// it would cost every process start a 9 MB copy under TCG.
func testSealedInit(t *testing.T, e *vmpodEnv) {
	// [agent] debug: the agent, and so libcontainer, log at debug level to
	// the guest console, which debug = true puts into containerd's log.
	cfg := e.configWith(t, "agent-debug.toml", "[agent]\ndebug = true\n")
	const id = "sealed"
	e.runDetached(id, []string{"--runtime-config-path", cfg}, "sleep", "1000")
	defer e.stopTask(id)
	e.ctr("task", "exec", "--exec-id", "x1", id, "true")

	var overlay int
	for _, l := range strings.Split(e.c.Logs(), "\n") {
		if !strings.Contains(l, "sandbox="+id) {
			continue
		}
		if strings.Contains(l, sealedByOverlay) {
			overlay++
		}
		if strings.Contains(l, sealedByCopy) || strings.Contains(l, copyingBinary) {
			t.Errorf("libcontainer copied the agent to start a process: %s", l)
		}
	}
	// One for the container's init, one for the exec.
	if overlay < 2 {
		t.Errorf("%d process starts sealed the agent with overlayfs, want 2 (the container's init and the exec): is the agent's debug log (%q) in containerd's log?", overlay, sealedByOverlay)
	}
}
