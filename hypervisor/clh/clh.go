// Package clh drives Cloud Hypervisor (CH, v40 or later) as a child
// process through its REST API on a Unix socket: vmm.ping until the API
// answers, vm.create with the guest's configuration, vm.add-net for each
// NIC (a tap's descriptor passed with SCM_RIGHTS, or its name), vm.boot;
// vm.pause, vm.resume and vm.info while it runs; vm.shutdown and
// vmm.shutdown to stop it. The guest's serial console goes to a FIFO that
// the driver reads line by line into the debug log, as the QEMU driver
// reads QEMU's stdout. vsock is CH's hybrid vsock (vsock.DialHybrid).
//
// The driver is experimental: no CI machine with KVM has run it against a
// real CH (docs/configuration.md).
package clh

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/console"
	"github.com/vmpod/vmpod/hypervisor/vmmproc"
)

// DefaultPath is CH's binary, looked up on PATH.
const DefaultPath = "cloud-hypervisor"

// KVMDevice is what CH runs guests on; it has no emulator to fall back to.
const KVMDevice = "/dev/kvm"

const (
	maxStderr = 64 << 10
	// apiWait bounds the wait for the API socket after CH started, when
	// the caller's context allows longer: CH binds it before anything
	// slow.
	apiWait = 10 * time.Second
	// pollEvery is the retry interval of that wait.
	pollEvery = 20 * time.Millisecond
	// quitGrace is how long Stop waits for CH to quit before SIGKILL when
	// the caller's context has no deadline.
	quitGrace = 5 * time.Second
	// consoleDrain bounds the console reader's drain of the FIFO after CH
	// exited (it ends sooner, at the FIFO's end, unless something else
	// still holds it open for writing).
	consoleDrain = time.Second
)

// hostInfo is hypervisor.HostInfo; tests replace it.
var hostInfo = hypervisor.HostInfo

// Jail runs CH as an unprivileged uid:gid. CH has no option to chroot
// itself after it opened its files (QEMU's -chroot), and it opens the
// kernel, initrd and sockets only at vm.create, so unlike QEMU it is not
// chrooted: it keeps the host's file system in view, as that uid.
type Jail struct {
	// UID and GID are the ids CH runs as; neither may be 0. Give each VM
	// its own (package jail).
	UID, GID uint32
}

// Option changes how New sets CH up.
type Option func(*CLH)

// WithJail runs CH as j.UID:j.GID, with /dev/kvm's group as a
// supplementary one; the state directory, the console FIFO and the
// virtio-fs socket are handed to that uid.
func WithJail(j Jail) Option { return func(c *CLH) { c.jail = &j } }

// WithCgroup moves CH into g as soon as it starts, before the guest
// touches its memory.
func WithCgroup(g *hostcgroup.Group) Option { return func(c *CLH) { c.cgroup = g } }

// CLH is one cloud-hypervisor process running one guest.
type CLH struct {
	cfg    hypervisor.Config
	jail   *Jail
	cgroup *hostcgroup.Group
	api    *apiClient

	mu      sync.Mutex // guards the start of proc, booted and stopped
	proc    *vmmproc.Proc
	booted  bool
	stopped bool

	console *console.Log
	fifo    *os.File // the console FIFO's read end
	fifoW   *os.File // a write end held until CH exited
}

var _ hypervisor.Hypervisor = (*CLH)(nil)

// New checks cfg and returns a driver for it; nothing runs until Start.
// CH boots an ELF vmlinux (PVH entry) with KVM; Machine and Accel do not
// apply. The vsock device, when cfg has one, must be a hybrid one
// (Vsock.HybridSocket).
func New(cfg hypervisor.Config, opts ...Option) (*CLH, error) {
	cfg = cfg.WithDefaults()
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if v := cfg.Vsock; v != nil && v.HybridSocket == "" {
		return nil, fmt.Errorf("clh %s: cloud-hypervisor has only hybrid vsock: set Vsock.HybridSocket", cfg.ID)
	}
	if cfg.Accel == hypervisor.AccelTCG {
		return nil, fmt.Errorf("clh %s: cloud-hypervisor runs guests with KVM only, not %s", cfg.ID, cfg.Accel)
	}
	c := &CLH{cfg: cfg, proc: vmmproc.New("clh", cfg.ID, maxStderr), console: &console.Log{Out: cfg.Console}}
	c.api = &apiClient{socket: c.APISocket()}
	for _, o := range opts {
		o(c)
	}
	if j := c.jail; j != nil && (j.UID == 0 || j.GID == 0) {
		return nil, fmt.Errorf("clh %s: jail uid:gid %d:%d would keep root", cfg.ID, j.UID, j.GID)
	}
	return c, nil
}

// APISocket is CH's API socket.
func (c *CLH) APISocket() string { return filepath.Join(c.cfg.StateDir, "clh-api.sock") }

// ConsolePath is the FIFO CH writes the guest's serial console to.
func (c *CLH) ConsolePath() string { return filepath.Join(c.cfg.StateDir, "console.fifo") }

// Start launches CH, waits for its API, creates the VM, adds its NICs and
// boots it. On failure CH is killed and the error carries its stderr.
func (c *CLH) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc.Started() || c.stopped {
		return fmt.Errorf("clh %s: already started", c.cfg.ID)
	}
	if err := c.cfg.CheckFiles(); err != nil {
		return err
	}
	if !hostInfo().KVMUsable {
		return fmt.Errorf("clh %s: cloud-hypervisor needs a usable %s (missing, or not readable and writable here)", c.cfg.ID, KVMDevice)
	}
	logger := log.G(ctx).WithField("vm", c.cfg.ID)
	if err := c.prepare(); err != nil {
		return fmt.Errorf("clh %s: %w", c.cfg.ID, err)
	}
	// CH's seccomp filters stay on (its default, said explicitly so that
	// an ExtraArgs override is visible).
	args := append([]string{"--api-socket", "path=" + c.APISocket(), "--seccomp", "true"}, c.cfg.ExtraArgs...)
	cmd := exec.Command(c.cfg.Path, args...)
	cmd.Stdout, cmd.Stderr = c.proc.Output(), c.proc.Output()
	if j := c.jail; j != nil {
		groups := []uint32{}
		if st, err := os.Stat(KVMDevice); err == nil {
			groups = append(groups, st.Sys().(*syscall.Stat_t).Gid)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: j.UID, Gid: j.GID, Groups: groups}}
	}
	logger.WithField("args", args).Debug("starting cloud-hypervisor")
	c.console.Entry = logger.WithField("console", true)
	consoleDone := make(chan struct{})
	go func() { // until drainConsole, or a failed start, closes the FIFO
		defer close(consoleDone)
		c.console.Run(c.fifo)
	}()
	if err := c.proc.Start(cmd, c.cgroup, func() { c.drainConsole(consoleDone) }); err != nil {
		if !c.proc.Started() {
			c.fifoW.Close()
			c.fifo.Close()
		}
		return err
	}
	if err := c.boot(ctx); err != nil {
		c.proc.Kill()
		return c.proc.StartError(err)
	}
	c.booted = true
	return nil
}

// prepare creates the state directory and the console FIFO, opened for
// reading before CH opens it for writing.
func (c *CLH) prepare() error {
	if err := os.MkdirAll(c.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	os.Remove(c.APISocket()) // a stale socket from a crashed run
	fifo := c.ConsolePath()
	os.Remove(fifo)
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return fmt.Errorf("console fifo %s: %w", fifo, err)
	}
	// The read end opens without waiting for a writer; the driver's own
	// write end keeps reads waiting for output, not ending, until CH has
	// opened it, and is closed once CH exited so that the reader drains
	// the FIFO to its end.
	f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("console fifo %s: %w", fifo, err)
	}
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		f.Close()
		return fmt.Errorf("console fifo %s: %w", fifo, err)
	}
	if j := c.jail; j != nil {
		if err := searchable(filepath.Dir(c.cfg.StateDir), *j); err != nil {
			f.Close()
			w.Close()
			return fmt.Errorf("jail: %w", err)
		}
		paths := []string{c.cfg.StateDir, fifo}
		if fs := c.cfg.SharedFS; fs != nil {
			paths = append(paths, fs.Socket)
		}
		for _, p := range paths {
			if err := os.Chown(p, int(j.UID), int(j.GID)); err != nil {
				f.Close()
				w.Close()
				return fmt.Errorf("jail: %w", err)
			}
		}
	}
	c.fifo, c.fifoW = f, w
	return nil
}

// boot waits for the API, then creates, wires and boots the VM.
func (c *CLH) boot(ctx context.Context) error {
	if err := c.waitAPI(ctx); err != nil {
		return err
	}
	vc := buildVMConfig(c.cfg, c.ConsolePath())
	if err := c.api.do(ctx, "PUT", "vm.create", vc, nil); err != nil {
		return fmt.Errorf("create the VM: %w", err)
	}
	for i, n := range c.cfg.Net {
		var files []*os.File
		if n.Tap != nil {
			files = append(files, n.Tap)
		}
		if err := c.api.do(ctx, "PUT", "vm.add-net", netConfigFor(i, n), nil, files...); err != nil {
			return fmt.Errorf("add NIC %d (%s): %w", i, n.MAC, err)
		}
	}
	if err := c.api.do(ctx, "PUT", "vm.boot", nil, nil); err != nil {
		return fmt.Errorf("boot the VM: %w", err)
	}
	return nil
}

// waitAPI pings CH until it answers, CH exits, or the wait (apiWait, or
// less as ctx allows) ends.
func (c *CLH) waitAPI(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, apiWait)
	defer cancel()
	start := time.Now()
	var lastErr error
	for {
		var pong pingResponse
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := c.api.do(pctx, "GET", "vmm.ping", nil, &pong)
		pcancel()
		if err == nil {
			if verr := CheckVersion(pong.Version); verr != nil {
				return fmt.Errorf("vmm.ping: %w", verr)
			}
			log.G(ctx).WithFields(log.Fields{"vm": c.cfg.ID, "version": pong.Version}).Debug("cloud-hypervisor API answers")
			return nil
		}
		lastErr = err
		// Anything but "not listening yet" or "no answer yet" means
		// something answered wrongly: asking again will not help.
		if !errors.Is(err, errConnect) && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("API socket %s: %w", c.APISocket(), err)
		}
		select {
		case <-c.proc.Done():
			return fmt.Errorf("exited before its API socket %s answered: %w", c.APISocket(), lastErr)
		case <-ctx.Done():
			waited := time.Since(start).Round(time.Millisecond)
			if _, serr := os.Stat(c.APISocket()); serr != nil {
				return fmt.Errorf("API socket %s did not appear within %s (is %s cloud-hypervisor v%d or later?)", c.APISocket(), waited, c.cfg.Path, MinVersion)
			}
			return fmt.Errorf("API socket %s did not answer within %s: %w", c.APISocket(), waited, lastErr)
		case <-time.After(pollEvery):
		}
	}
}

// drainConsole, once CH is reaped, lets the console reader drain the FIFO
// to its end, within consoleDrain.
func (c *CLH) drainConsole(consoleDone <-chan struct{}) {
	c.fifoW.Close()
	c.fifo.SetReadDeadline(time.Now().Add(consoleDrain))
	select {
	case <-consoleDone:
	case <-time.After(2 * consoleDrain):
	}
	c.fifo.Close()
}

// Stop shuts the VM and CH down through the API, kills CH if that does not
// end it before ctx (or quitGrace) ends, waits for it and removes its
// socket and FIFO.
func (c *CLH) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	if !c.proc.Started() {
		return nil
	}
	defer os.Remove(c.ConsolePath())
	defer os.Remove(c.APISocket())
	return c.proc.Stop(ctx, quitGrace, func(qctx context.Context) {
		logger := log.G(ctx).WithField("vm", c.cfg.ID)
		if c.booted {
			if err := c.api.do(qctx, "PUT", "vm.shutdown", nil, nil); err != nil {
				logger.WithError(err).Debug("vm.shutdown failed")
			}
		}
		if err := c.api.do(qctx, "PUT", "vmm.shutdown", nil, nil); err != nil {
			logger.WithError(err).Warn("vmm.shutdown failed; killing cloud-hypervisor")
		}
	})
}

// Done is closed when CH has exited.
func (c *CLH) Done() <-chan struct{} { return c.proc.Done() }

// Err is CH's exit error with its output; nil before exit or for a clean
// exit.
func (c *CLH) Err() error { return c.proc.Err() }

// Pid is CH's process id, 0 before Start.
func (c *CLH) Pid() int { return c.proc.Pid() }

// Stderr is what CH wrote to stdout and stderr so far (the last 64 KiB).
func (c *CLH) Stderr() string { return c.proc.Output().String() }

// ConsoleTail is the last lines of the guest console, for error messages.
func (c *CLH) ConsoleTail() string { return c.console.Tail() }

// Pause stops the guest's vCPUs (vm.pause).
func (c *CLH) Pause(ctx context.Context) error { return c.action(ctx, "vm.pause") }

// Resume continues the guest's vCPUs (vm.resume).
func (c *CLH) Resume(ctx context.Context) error { return c.action(ctx, "vm.resume") }

// Info is vm.info: the VM's state.
func (c *CLH) Info(ctx context.Context) (Info, error) {
	var info Info
	if err := c.running(); err != nil {
		return info, err
	}
	if err := c.api.do(ctx, "GET", "vm.info", nil, &info); err != nil {
		return Info{}, fmt.Errorf("clh %s: %w", c.cfg.ID, err)
	}
	return info, nil
}

func (c *CLH) action(ctx context.Context, endpoint string) error {
	if err := c.running(); err != nil {
		return err
	}
	if err := c.api.do(ctx, "PUT", endpoint, nil, nil); err != nil {
		return fmt.Errorf("clh %s: %w", c.cfg.ID, err)
	}
	return nil
}

func (c *CLH) running() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.booted || c.stopped {
		return fmt.Errorf("clh %s: not running", c.cfg.ID)
	}
	select {
	case <-c.proc.Done():
		return fmt.Errorf("clh %s: not running: %w", c.cfg.ID, errors.Join(errors.New("exited"), c.proc.Err()))
	default:
	}
	return nil
}

// searchable checks that j's uid can reach dir: CH, jailed, opens its
// sockets and FIFO in the state directory by path, and unlike QEMU it does
// not chroot as root first. Every directory from / to dir must grant it
// search (x) permission.
func searchable(dir string, j Jail) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		mode := st.Mode().Perm()
		ok := mode&0o001 != 0 ||
			(sys.Gid == j.GID && mode&0o010 != 0) ||
			(sys.Uid == j.UID && mode&0o100 != 0)
		if !ok {
			return fmt.Errorf("uid %d cannot reach the state directory: %s (mode %04o, %d:%d) is not searchable by it; make it searchable (chmod o+x), or run cloud-hypervisor unjailed (hypervisor.clh.jail = false)", j.UID, d, mode, sys.Uid, sys.Gid)
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}
