package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/vmpod/vmpod/integration/harness"
)

// Runtimes compared.
const (
	kata = "io.containerd.kata.v2"
	runc = "io.containerd.runc.v2"
)

// ctrTimeout bounds one ctr command; density under TCG on two cores is
// the slowest.
const ctrTimeout = 10 * time.Minute

// dialTimeout is the shim's wait for the agent: the default 30s is too
// short for -density guests booting at once under TCG on two cores.
const dialTimeout = 5 * time.Minute

// env is a private containerd (integration/harness) with vmpod's shim and
// runc, the busybox image, and a vmpod configuration for the pod VMs.
type env struct {
	b      *testing.B
	c      *harness.Containerd
	image  string
	kernel string
	initrd string
	// stateRoot holds the shim's sandbox directories (VMPOD_STATE_ROOT).
	stateRoot string
}

func newEnv(b *testing.B) *env {
	b.Helper()
	lookPath(b, "qemu-system-x86_64")
	kernel, initrd := guestImage(b)
	shim := *shimPath
	if shim == "" {
		shim = harness.Shim(b)
	}
	a, _ := accel()
	// debug = true: the shim's debug lines, which mark the phases, reach
	// containerd's log (the harness runs containerd at debug level).
	params, err := toml.Marshal(map[string]any{"kernel_params": kernelParams})
	if err != nil {
		b.Fatal(err)
	}
	memorySettings(b) // checks the flags, notes them for the report
	cfg := fmt.Sprintf("[hypervisor.qemu]\nkernel = %q\ninitrd = %q\nmachine_type = %q\naccel = %q\n"+
		"default_vcpus = %d\ndefault_memory = %d\n%s%s[agent]\ndial_timeout = %q\n[runtime]\ndebug = true\nenable_pprof = %v\n",
		kernel, initrd, *machine, a, *vcpus, *memoryMiB, params, memoryTOML(), dialTimeout.String(), *shimProf != "")
	cfgPath := filepath.Join(b.TempDir(), "configuration.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	stateRoot, err := os.MkdirTemp("", "vmpod-bench-sb-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(stateRoot) })
	c := harness.StartContainerd(b, harness.Options{
		ShimPath:    shim,
		VMPODConfig: cfgPath,
		Env:         []string{"VMPOD_STATE_ROOT=" + stateRoot},
		StateDirs:   []string{stateRoot},
	})
	b.Cleanup(func() { c.AssertClean(b) })
	return &env{b: b, c: c, image: harness.ImportBusybox(b, c), kernel: kernel, initrd: initrd, stateRoot: stateRoot}
}

func ctrContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), ctrTimeout)
}

// run is `ctr run --rm` of the busybox image under runtime; it returns
// how long ctr took.
func (e *env) run(runtime, id string, args ...string) (time.Duration, error) {
	ctx, cancel := ctrContext()
	defer cancel()
	full := append([]string{"run", "--rm", "--runtime", runtime, e.image, id}, args...)
	start := time.Now()
	_, _, err := e.c.Ctr(ctx, full...)
	return time.Since(start), err
}

// startIdle starts a detached `sleep` container; ctr returns once the task
// is running.
func (e *env) startIdle(runtime, id string) error {
	ctx, cancel := ctrContext()
	defer cancel()
	_, _, err := e.c.Ctr(ctx, "run", "-d", "--runtime", runtime, e.image, id, "sleep", "1000000")
	return err
}

// remove kills and deletes a container started by startIdle. The task can
// be deleted only once its exit has reached containerd, so the delete is
// retried until then, within ctrTimeout.
func (e *env) remove(id string) error {
	ctx, cancel := ctrContext()
	defer cancel()
	if _, _, err := e.c.Ctr(ctx, "task", "kill", "--signal", "SIGKILL", id); err != nil {
		return err
	}
	for {
		_, _, err := e.c.Ctr(ctx, "task", "delete", id)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "must be stopped") {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("task %s still running %s after SIGKILL: %w", id, ctrTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	_, _, err := e.c.Ctr(ctx, "container", "delete", id)
	return err
}

// discard removes what a failed `ctr run` left: ctr deletes the container
// only after a run that started. Errors are the caller's to have reported.
func (e *env) discard(id string) {
	ctx, cancel := ctrContext()
	defer cancel()
	_, _, _ = e.c.Ctr(ctx, "task", "delete", "--force", id)
	_, _, _ = e.c.Ctr(ctx, "container", "delete", id)
}

// exec runs `ctr task exec` in container id and returns how long it took.
func (e *env) exec(id, execID string, args ...string) (time.Duration, error) {
	ctx, cancel := ctrContext()
	defer cancel()
	full := append([]string{"task", "exec", "--exec-id", execID, id}, args...)
	start := time.Now()
	_, _, err := e.c.Ctr(ctx, full...)
	return time.Since(start), err
}

// counter counts bytes and notes when the first and the last arrived.
type counter struct {
	n           atomic.Int64
	first, last time.Time
}

func (c *counter) Write(p []byte) (int, error) {
	now := time.Now()
	if c.first.IsZero() {
		c.first = now
	}
	c.last = now
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// A writer is the command that streams size bytes of zeros to stdout.
type writer func(size int64) []string

// headWriter is busybox's `head -c`: it copies through stdio one byte at
// a time and writes 4 KiB chunks, so under emulation its own CPU weighs
// on the figure (docs/performance.md).
func headWriter(size int64) []string { return []string{"head", "-c", fmt.Sprint(size), "/dev/zero"} }

// ddWriter is `dd` in 256 KiB blocks: one read and one write per block,
// the writer the stream floor's guest process is; size is a whole number
// of blocks (whole MiB).
func ddWriter(size int64) []string {
	return []string{"dd", "if=/dev/zero", fmt.Sprintf("bs=%d", ddBlock), fmt.Sprintf("count=%d", size/ddBlock)}
}

const ddBlock = 256 << 10

// stream execs w's command for size bytes in container id and returns the
// rate at which ctr's stdout delivered the bytes, first byte to last, in
// MiB/s. The harness' Ctr buffers the output; this counts it instead.
func (e *env) stream(id, execID string, size int64, w writer) (float64, error) {
	ctx, cancel := ctrContext()
	defer cancel()
	args := append([]string{"--address", e.c.Address, "--namespace", harness.Namespace,
		"task", "exec", "--exec-id", execID, id}, w(size)...)
	cmd := exec.CommandContext(ctx, e.c.Daemon.Ctr, args...)
	var out counter
	cmd.Stdout, cmd.Stderr = &out, io.Discard
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("stream %d bytes from %s: %w", size, id, err)
	}
	if got := out.n.Load(); got != size {
		return 0, fmt.Errorf("stream from %s: ctr delivered %d bytes, want %d", id, got, size)
	}
	d := out.last.Sub(out.first).Seconds()
	if d <= 0 {
		return 0, fmt.Errorf("stream from %s: no measurable duration", id)
	}
	return float64(size) / (1 << 20) / d, nil
}

// logOffset is the size of containerd's log now: the start of what the
// next command logs.
func (e *env) logOffset() int64 {
	st, err := os.Stat(e.c.LogFile)
	if err != nil {
		return 0
	}
	return st.Size()
}

// logSince parses containerd's log from offset on.
func (e *env) logSince(off int64) ([]logEntry, error) {
	f, err := os.Open(e.c.LogFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil, fmt.Errorf("%s: %w", e.c.LogFile, err)
	}
	return parseLog(f)
}
