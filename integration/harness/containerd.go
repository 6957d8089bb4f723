// Package harness runs a private containerd for integration tests: the real
// daemon from the distribution, with its own root, state, socket and
// configuration in a temporary directory, a PATH that finds the freshly
// built containerd-shim-kata-v2 first, a busybox image built in Go (no
// registry), and checks that a test left no shim, VM or mount behind.
//
// Tests using it need root and /usr/bin/containerd and ctr; StartContainerd
// skips the test with the reason when they are missing. $VMPOD_CONTAINERD=2
// runs the pinned containerd 2.x of scripts/containerd2.sh instead, with
// its own ctr and runc shim (see SelectedDaemon); the configuration the
// harness writes follows the daemon's version.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/lockedfork"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

// Namespace is the containerd namespace every ctr command of the harness
// uses. It is the test process's own because the containers' cgroups are
// named after it (/<namespace>/<id>), host-wide, and the leak check looks
// there.
var Namespace = fmt.Sprintf("vmpod-test-%d", os.Getpid())

// ShimName is the binary containerd runs for runtime io.containerd.kata.v2.
const ShimName = "containerd-shim-kata-v2"

// Bounds on the daemon's life; every wait of the harness has one.
const (
	DefaultStartTimeout = 30 * time.Second
	DefaultCtrTimeout   = 2 * time.Minute
	stopTimeout         = 15 * time.Second
	purgeTimeout        = 60 * time.Second
)

// Options configures StartContainerd. The zero value runs containerd with
// only runc available.
type Options struct {
	// ShimPath is a containerd-shim-kata-v2 binary (any file name); it is
	// linked into a directory put first on containerd's PATH. Empty: no
	// kata runtime.
	ShimPath string
	// VMPODConfig, if set, is exported as $VMPOD_CONFIG to containerd and so
	// to every shim it starts.
	VMPODConfig string
	// Env holds further NAME=value entries for containerd and its shims.
	Env []string
	// CRI enables the CRI plugin with runtime handlers "runc" (default) and
	// "kata" (io.containerd.kata.v2), restrict_oom_score_adj = true.
	CRI bool
	// RegistryConfigPath, if set, is the CRI plugin's registry config_path
	// (a directory of <host>/hosts.toml).
	RegistryConfigPath string
	// SandboxImage is the CRI sandbox (pause) image; used when CRI is set.
	SandboxImage string
	// KataConfigPath, if set, is the kata runtime's ConfigPath option (CRI).
	KataConfigPath string
	// KataPodAnnotations, if set, is the kata runtime's pod_annotations
	// (CRI): the patterns of pod annotations CRI passes to the shim.
	KataPodAnnotations []string
	// RuntimeSnippet, if set, is a file of containerd configuration that
	// declares the CRI kata runtime instead of the harness, as an operator
	// installs it: imported as a drop-in by containerd 2.x (config version
	// 3), merged into config.toml for 1.x (version 2). KataConfigPath does
	// not apply then.
	RuntimeSnippet string
	// ExtraConfig is TOML appended to containerd's config.toml (written
	// for the daemon's config version: see Containerd.Daemon).
	ExtraConfig string
	// StateDirs are directories of vmpod's own per-sandbox state that must
	// hold no entries when the test ends (AssertClean).
	StateDirs []string
	// StartTimeout bounds the wait for the socket; 0 means
	// DefaultStartTimeout.
	StartTimeout time.Duration
}

// Containerd is a running private containerd.
type Containerd struct {
	Dir        string // everything below belongs to this daemon
	Root       string // containerd's root (content, snapshots, metadata)
	State      string // containerd's state (bundles, shim state)
	Address    string // the gRPC socket
	ConfigFile string // the config.toml written for it
	LogFile    string // containerd's stdout and stderr
	BinDir     string // first on containerd's PATH; holds the shim
	Daemon     Daemon // the containerd build that runs (SelectedDaemon)

	opts Options
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	err  error         // cmd.Wait's result, valid after done
}

// Requirements returns why containerd cannot run here, or nil. A build
// selected by the environment is not checked here: StartContainerd fails
// the test when it cannot be had, since it was asked for.
func Requirements() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to run containerd")
	}
	if os.Getenv(EnvContainerdBin) != "" || os.Getenv(EnvContainerd) == "2" {
		return nil
	}
	for _, bin := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("needs %s (apt-get install containerd): %w", bin, err)
		}
	}
	return nil
}

// StartContainerd starts a private containerd and registers its teardown
// with t: remaining tasks and containers are killed and deleted, the daemon
// is stopped, anything still mounted under its directory is unmounted and
// the directory removed. On failure the daemon's log is written to t.Log.
func StartContainerd(t testing.TB, opts Options) *Containerd {
	t.Helper()
	if err := Requirements(); err != nil {
		require.Missing(t, err)
	}
	daemon, err := SelectedDaemon()
	if err != nil {
		t.Fatalf("containerd: %v", err)
	}
	// Short and outside t.TempDir: shim and ttrpc socket paths must stay
	// under the 108 bytes of sun_path, whatever the test's name.
	dir, err := os.MkdirTemp("", "vmpod-ctd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir:        dir,
		Root:       filepath.Join(dir, "root"),
		State:      filepath.Join(dir, "state"),
		Address:    filepath.Join(dir, "containerd.sock"),
		ConfigFile: filepath.Join(dir, "config.toml"),
		LogFile:    filepath.Join(dir, "containerd.log"),
		BinDir:     filepath.Join(dir, "bin"),
		Daemon:     daemon,
		opts:       opts,
		done:       make(chan struct{}),
	}
	// Registered first so that it runs last, after the teardown below.
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLog(t)
		}
		c.teardown(t)
	})
	if err := c.start(opts); err != nil {
		t.Fatalf("starting containerd in %s: %v", dir, err)
	}
	t.Logf("%s in %s", daemon, dir)
	return c
}

func (c *Containerd) start(opts Options) error {
	if err := os.MkdirAll(c.BinDir, 0o755); err != nil {
		return err
	}
	if opts.ShimPath != "" {
		abs, err := filepath.Abs(opts.ShimPath)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("shim binary: %w", err)
		}
		if err := os.Symlink(abs, filepath.Join(c.BinDir, ShimName)); err != nil {
			return err
		}
	}
	cfg, err := c.configTOML()
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.ConfigFile, []byte(cfg), 0o644); err != nil {
		return err
	}
	return c.launch()
}

// Restart stops the daemon with SIGTERM, as an operator restarting the
// service would, and starts it again with the same configuration, root and
// state. Shims survive it: each runs in its own process group, and
// containerd reconnects to them at start.
func (c *Containerd) Restart(t testing.TB) {
	t.Helper()
	if err := c.stop(); err != nil {
		t.Fatalf("stopping containerd for a restart: %v", err)
	}
	c.done, c.err = make(chan struct{}), nil
	if err := c.launch(); err != nil {
		t.Fatalf("restarting containerd in %s: %v", c.Dir, err)
	}
}

// launch runs the daemon and waits until it answers.
func (c *Containerd) launch() error {
	opts := c.opts
	logf, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()

	cmd := exec.Command(c.Daemon.Containerd, "--config", c.ConfigFile)
	cmd.Env = c.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.Dir
	// Its own process group, so that ^C on the test does not reach it
	// first; and killed with the test process if that dies without
	// cleaning up (a test timeout panics past t.Cleanup).
	// lockedfork: Pdeathsig fires when the forking thread ends, not the
	// process, so that another test's LockOSThread goroutine ending must
	// not be the end of it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	waited, err := lockedfork.Start(cmd)
	if err != nil {
		return err
	}
	go func() {
		c.err = <-waited
		close(c.done)
	}()
	c.cmd = cmd
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = DefaultStartTimeout
	}
	return c.waitReady(timeout)
}

func (c *Containerd) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "VMPOD_CONFIG=") {
			continue
		}
		env = append(env, kv)
	}
	// The vmpod shim first, then the runc shim of the daemon's own build.
	path := c.BinDir + ":"
	if c.Daemon.BinDir != "" {
		path += c.Daemon.BinDir + ":"
	}
	env = append(env, "PATH="+path+os.Getenv("PATH"))
	if c.opts.VMPODConfig != "" {
		env = append(env, "VMPOD_CONFIG="+c.opts.VMPODConfig)
	}
	return append(env, c.opts.Env...)
}

// waitReady polls `ctr version` until the daemon answers, it exits, or
// timeout passes.
func (c *Containerd) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lastErr error
	for {
		select {
		case <-c.done:
			return fmt.Errorf("containerd exited: %v (log %s)", c.err, c.LogFile)
		default:
		}
		try, cancelTry := context.WithTimeout(ctx, 5*time.Second)
		_, _, err := c.Ctr(try, "version")
		cancelTry()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer on %s within %s: %w", c.Address, timeout, lastErr)
		case <-c.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Ctr runs `ctr --address <sock> --namespace vmpod-test args...` with the
// daemon's own ctr. Without a deadline in ctx, DefaultCtrTimeout applies.
// The error carries the arguments and stderr. (containerd 2.x's ctr warns
// on stderr that cgroup v1 is deprecated, on hosts that have it.)
func (c *Containerd) Ctr(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return c.CtrStdin(ctx, nil, args...)
}

// CtrStdin is Ctr with stdin; nil means no input. ctr does not close the
// container's stdin at EOF, so the program must stop reading by itself.
func (c *Containerd) CtrStdin(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	return c.CtrIn(ctx, Namespace, stdin, args...)
}

// CtrIn is CtrStdin in namespace ns (the CRI plugin uses "k8s.io").
func (c *Containerd) CtrIn(ctx context.Context, ns string, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCtrTimeout)
		defer cancel()
	}
	full := append([]string{"--address", c.Address, "--namespace", ns}, args...)
	cmd := exec.CommandContext(ctx, c.Daemon.Ctr, full...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	// ctr run leaves the fifo copiers of a killed ctr holding the pipes;
	// do not wait for them forever.
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		err = fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}

// Logs returns what containerd has logged so far.
func (c *Containerd) Logs() string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", c.LogFile, err)
	}
	return string(b)
}

func (c *Containerd) dumpLog(t testing.TB) {
	const max = 256 << 10
	l := c.Logs()
	if len(l) > max {
		l = "...\n" + l[len(l)-max:]
	}
	t.Logf("containerd log (%s):\n%s", c.LogFile, l)
}

// Shim builds containerd-shim-kata-v2 from this tree (once per test
// process), for Options.ShimPath.
func Shim(t testing.TB) string {
	t.Helper()
	return testbin.Build(t, "./cmd/containerd-shim-kata-v2", false)
}

// Pid is the daemon's process id.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }
