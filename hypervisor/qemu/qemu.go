// Package qemu drives QEMU as a child process: it builds the command line,
// controls the VMM over QMP and turns the guest console into debug logs.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/console"
	"github.com/vmpod/vmpod/hypervisor/vmmproc"
)

// DefaultPath is Debian's QEMU for x86-64 guests.
const DefaultPath = "/usr/bin/qemu-system-x86_64"

const (
	maxStderr = 64 << 10
	// quitGrace is how long Stop waits for QMP quit before SIGKILL when
	// the caller's context has no deadline.
	quitGrace = 5 * time.Second
)

// Jail confines QEMU once it has opened everything it needs (kernel,
// initrd, sockets, taps, guest memory) and before the guest runs: its root
// becomes Dir and it drops to UID:GID, with no capabilities left.
type Jail struct {
	// Dir is QEMU's new root: an absolute path to an empty directory the
	// caller owns (root-owned, mode 0700 does: QEMU enters it as root).
	Dir string
	// UID and GID are the unprivileged ids QEMU runs as; neither may be 0.
	// Give each VM its own (see package jail), or one VM's QEMU may signal
	// or trace another's.
	UID, GID uint32
}

func (j Jail) validate(id string) error {
	switch {
	case j.Dir == "" || !filepath.IsAbs(j.Dir):
		return fmt.Errorf("qemu %s: jail directory %q is not an absolute path", id, j.Dir)
	case j.UID == 0 || j.GID == 0:
		return fmt.Errorf("qemu %s: jail uid:gid %d:%d would keep root", id, j.UID, j.GID)
	}
	return nil
}

// Option changes how New sets QEMU up.
type Option func(*QEMU)

// WithJail runs QEMU chrooted into j.Dir as j.UID:j.GID.
func WithJail(j Jail) Option {
	return func(q *QEMU) { q.jail = &j }
}

// WithCgroup moves QEMU into g as soon as it starts, before the guest
// touches its memory, so that the memory is charged there.
func WithCgroup(g *hostcgroup.Group) Option {
	return func(q *QEMU) { q.cgroup = g }
}

// QEMU is one QEMU process running one guest.
type QEMU struct {
	cfg    hypervisor.Config
	jail   *Jail             // nil: unjailed
	cgroup *hostcgroup.Group // nil: its parent's

	mu      sync.Mutex // guards the start of proc, qmp and stopped
	proc    *vmmproc.Proc
	qmp     *qmpClient
	stopped bool

	hp      *hotplug
	console *console.Log
}

var _ hypervisor.Hypervisor = (*QEMU)(nil)

// New checks cfg and returns a driver for it; nothing runs until Start.
func New(cfg hypervisor.Config, opts ...Option) (*QEMU, error) {
	cfg = cfg.WithDefaults()
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for i, n := range cfg.Net {
		if n.Tap == nil {
			return nil, fmt.Errorf("qemu %s: NIC %d: QEMU needs the tap as a descriptor, not by name (%q)", cfg.ID, i, n.TapName)
		}
	}
	if v := cfg.Vsock; v != nil && v.HybridSocket != "" {
		return nil, fmt.Errorf("qemu %s: QEMU has no hybrid vsock", cfg.ID)
	}
	q := &QEMU{cfg: cfg, hp: newHotplug(cfg), proc: vmmproc.New("qemu", cfg.ID, maxStderr), console: &console.Log{Out: cfg.Console}}
	for _, o := range opts {
		o(q)
	}
	if q.jail != nil {
		if err := q.jail.validate(cfg.ID); err != nil {
			return nil, err
		}
	}
	return q, nil
}

// QMPSocket is the control socket's path.
func (q *QEMU) QMPSocket() string { return filepath.Join(q.cfg.StateDir, "qmp.sock") }

// Start launches QEMU and connects to its QMP socket.
func (q *QEMU) Start(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.proc.Started() || q.stopped {
		return fmt.Errorf("qemu %s: already started", q.cfg.ID)
	}
	if err := q.cfg.CheckFiles(); err != nil {
		return err
	}
	logger := log.G(ctx).WithField("vm", q.cfg.ID)
	host := hypervisor.HostInfo()
	accel, reason, err := hypervisor.ChooseAccel(q.cfg.Accel, host)
	if err != nil {
		return fmt.Errorf("qemu %s: %w", q.cfg.ID, err)
	}
	if accel == hypervisor.AccelTCG && q.cfg.Accel == hypervisor.AccelAuto {
		logger.Infof("using TCG (no hardware acceleration): %s", reason)
	}
	if err := os.MkdirAll(q.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("qemu %s: state directory: %w", q.cfg.ID, err)
	}
	os.Remove(q.QMPSocket()) // a stale socket from a crashed run
	cl := commandLine{cfg: q.cfg, accel: accel, tscKHz: host.TSCkHz, qmpSocket: q.QMPSocket(), jail: q.jail}
	var extraFiles []*os.File
	if v := q.cfg.Vsock; v != nil && v.VhostUserSocket == "" && v.VhostFD != nil {
		extraFiles = append(extraFiles, v.VhostFD)
		cl.vhostFD = 2 + len(extraFiles) // ExtraFiles start at fd 3
	}
	for _, n := range q.cfg.Net {
		extraFiles = append(extraFiles, n.Tap)
		cl.tapFDs = append(cl.tapFDs, 2+len(extraFiles))
	}
	args := cl.args()

	consoleR, consoleW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("qemu %s: console pipe: %w", q.cfg.ID, err)
	}
	cmd := exec.Command(q.cfg.Path, args...)
	cmd.Stdout = consoleW
	cmd.Stderr = q.proc.Output()
	cmd.ExtraFiles = extraFiles
	// Jailed, QEMU loses its parent-death signal when it changes uid (the
	// kernel clears it on a credential change); the shim's delete action
	// then kills it.
	logger.WithField("args", args).Debug("starting qemu")
	q.console.Entry = logger.WithField("console", true)
	consoleDone := make(chan struct{})
	go func() { // until QEMU, or a failed start, closes the write end
		defer close(consoleDone)
		defer consoleR.Close()
		q.console.Run(consoleR)
	}()
	err = q.proc.Start(cmd, q.cgroup, func() {
		// Let the console reader log the last lines before Done fires.
		select {
		case <-consoleDone:
		case <-time.After(time.Second):
		}
	})
	consoleW.Close()
	if err != nil {
		return err
	}

	qmp, err := dialQMP(ctx, q.QMPSocket(), q.proc.Done())
	if err != nil {
		q.proc.Kill()
		return q.proc.StartError(err)
	}
	q.qmp = qmp
	return nil
}

// Stop quits QEMU over QMP, kills it if that does not work before ctx (or
// quitGrace) ends, waits for it and removes the QMP socket.
func (q *QEMU) Stop(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return nil
	}
	q.stopped = true
	if !q.proc.Started() {
		return nil
	}
	defer os.Remove(q.QMPSocket())
	err := q.proc.Stop(ctx, quitGrace, func(qctx context.Context) {
		if q.qmp == nil {
			return
		}
		if err := q.qmp.Quit(qctx); err != nil {
			log.G(ctx).WithField("vm", q.cfg.ID).WithError(err).Warn("qmp quit failed; killing qemu")
		}
	})
	if q.qmp != nil {
		q.qmp.Close()
	}
	return err
}

// Done is closed when QEMU has exited.
func (q *QEMU) Done() <-chan struct{} { return q.proc.Done() }

// Err is QEMU's exit error with its stderr; nil before exit or for a clean
// exit.
func (q *QEMU) Err() error { return q.proc.Err() }

// Pid is QEMU's process id, 0 before Start.
func (q *QEMU) Pid() int { return q.proc.Pid() }

// Stderr is what QEMU wrote to stderr so far (the last 64 KiB).
func (q *QEMU) Stderr() string { return q.proc.Output().String() }

// ConsoleTail is the last lines of the guest console, for error messages.
func (q *QEMU) ConsoleTail() string { return q.console.Tail() }

// Pause stops the guest's vCPUs.
func (q *QEMU) Pause(ctx context.Context) error { return q.exec(ctx, "stop") }

// Resume continues the guest's vCPUs.
func (q *QEMU) Resume(ctx context.Context) error { return q.exec(ctx, "cont") }

// Status is the VM's run state as QMP query-status reports it.
func (q *QEMU) Status(ctx context.Context) (string, error) {
	c, err := q.client()
	if err != nil {
		return "", err
	}
	return c.Status(ctx)
}

func (q *QEMU) exec(ctx context.Context, cmd string) error {
	c, err := q.client()
	if err != nil {
		return err
	}
	if _, err := c.Execute(ctx, cmd); err != nil {
		return fmt.Errorf("qemu %s: %w", q.cfg.ID, err)
	}
	return nil
}

func (q *QEMU) client() (*qmpClient, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.qmp == nil || q.stopped {
		return nil, fmt.Errorf("qemu %s: not running", q.cfg.ID)
	}
	select {
	case <-q.proc.Done():
		return nil, fmt.Errorf("qemu %s: not running: %w", q.cfg.ID, errors.Join(errors.New("exited"), q.proc.Err()))
	default:
	}
	return q.qmp, nil
}
