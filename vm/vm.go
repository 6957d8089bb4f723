// Package vm boots one guest and hands back a live connection to its agent:
// it runs virtiofsd for the shared directory, the vsock device (vmpod's own
// vhost-user backend in this process, or the kernel's vhost-vsock) and QEMU,
// and dials the agent until it answers.
//
// The caller creates the sandbox in the guest: CreateSandbox with
// SharedMount() among its mounts, so that the hostname, DNS and the mounts
// go in one request.
package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/clh"
	"github.com/vmpod/vmpod/hypervisor/jail"
	"github.com/vmpod/vmpod/hypervisor/qemu"
	"github.com/vmpod/vmpod/internal/mountns"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/virtiofs"
	"github.com/vmpod/vmpod/vsock"
	"github.com/vmpod/vmpod/vsock/device"
)

// Drivers: which VMM runs the guest (config's [hypervisor] type).
const (
	DriverQEMU = "qemu"
	DriverCLH  = "clh" // Cloud Hypervisor: experimental
)

// Vsock modes.
const (
	VsockAuto      = "auto"       // vhost when /dev/vhost-vsock exists, else vhost-user
	VsockVhost     = "vhost"      // the host kernel's vhost-vsock
	VsockVhostUser = "vhost-user" // vmpod's Go backend
)

const (
	// AgentPort is the vsock port the agent serves on.
	AgentPort = 1024
	// SharedTag is the virtio-fs tag of the shared directory.
	SharedTag = "vmpod"
	// GuestSharedDir is where the guest mounts the shared directory.
	GuestSharedDir = "/run/vmpod/shared"
	// DefaultDialTimeout bounds the wait for the agent after QEMU starts.
	DefaultDialTimeout = 60 * time.Second

	// vhostUserCID is the guest's CID with the vhost-user backend; it is
	// private to the backend, so every VM may use the same.
	vhostUserCID = 3
	// Kernel CIDs are claimed on the host from this range.
	minKernelCID, maxKernelCID = 1000, 1 << 30
	// checkTimeout bounds one Check attempt while the guest boots.
	checkTimeout = 2 * time.Second
	// jailDirName is QEMU's root when jailed, inside the state directory.
	jailDirName = "root"
)

// Config describes one VM.
type Config struct {
	// ID names the VM in logs and QEMU's process title.
	ID string
	// StateDir holds the VM's sockets. Start creates it and Stop removes
	// it, so it must be the VM's own (for example
	// /run/vmpod/sandboxes/<id>/vm).
	StateDir string
	// Hypervisor is the guest: Path, Kernel, Initrd, Machine, Accel, VCPUs,
	// MemoryMiB, KernelParams, Net (taps), Console, ExtraArgs. Its ID, StateDir, Vsock
	// and SharedFS are set by Start.
	Hypervisor hypervisor.Config
	// VsockMode is VsockAuto (default), VsockVhost or VsockVhostUser.
	VsockMode string
	// VirtiofsdPath is the virtiofsd binary (default virtiofs.DefaultPath).
	VirtiofsdPath string
	// SharedDir is the host directory exported to the guest by virtio-fs;
	// empty means no shared directory.
	SharedDir string
	// VirtiofsCache is virtiofsd's cache mode (default auto).
	VirtiofsCache string
	// DialTimeout bounds the wait for the agent (default 60s: TCG is slow).
	DialTimeout time.Duration
	// Debug makes the agent log at debug level (to the guest console).
	Debug bool
	// DebugConsole makes the agent serve DebugExec (--debug-console).
	DebugConsole bool
	// Jail, when set, runs QEMU as a uid of its own from this range,
	// chrooted into an empty directory (<StateDir>/root); nil leaves QEMU
	// running as root with the host's file system in view.
	Jail *jail.Range
	// Cgroup, when set, is the host cgroup QEMU and virtiofsd join as
	// they start (the pod's, from the sandbox's spec); nil leaves them in
	// the caller's.
	Cgroup *hostcgroup.Group
	// Driver is DriverQEMU (default) or DriverCLH. With CLH the vsock is
	// CH's hybrid vsock and VsockMode does not apply; a jail is a uid of
	// its own without a chroot (package clh).
	Driver string
	// AgentInterceptor, when set, wraps every call of the agent client
	// (the shim's RPC latency metrics).
	AgentInterceptor ttrpc.UnaryClientInterceptor
	// MountNS is the mount namespace virtiofsd runs in and the shared
	// directory's mounts are made in (internal/mountns); nil: the
	// caller's.
	MountNS *mountns.NS
}

// driver is what VM needs of a hypervisor driver.
type driver interface {
	hypervisor.Hypervisor
	ConsoleTail() string
}

// Phases are how long the parts of a VM's start took.
type Phases struct {
	// VMMStart: virtiofsd, the vsock device and QEMU's process, up to
	// QEMU's QMP answering.
	VMMStart time.Duration
	// GuestBoot: from QEMU running to the agent accepting a connection
	// (firmware, kernel, initrd, the agent's set-up).
	GuestBoot time.Duration
	// AgentReady: from that connection to the agent's first answer.
	AgentReady time.Duration
}

// Total is the whole start.
func (p Phases) Total() time.Duration { return p.VMMStart + p.GuestBoot + p.AgentReady }

// VM is a running guest with its agent connection.
type VM struct {
	cfg     Config
	hv      driver
	fs      *virtiofs.Daemon
	backend *vsock.Backend
	served  chan error // the backend's Serve result
	cid     uint32
	vhostFD *os.File
	hybrid  string // CH's hybrid vsock socket, "" with QEMU
	client  *ttrpc.Client
	agent   agentpb.AgentService
	jailID  *jail.ID // nil when unjailed
	phases  Phases

	stopOnce sync.Once
	stopErr  error
	fsErr    atomic.Pointer[error] // set when virtiofsd died under the guest
}

// testHookBeforeHypervisor runs after the devices' daemons started and
// before QEMU does; tests use it to misbehave in that window.
var testHookBeforeHypervisor func(stateDir string)

// Start boots the VM and returns once the agent answered Check. On any
// failure everything started is stopped and removed again, and the error
// carries QEMU's stderr (when QEMU exited) or the console's last lines.
func Start(ctx context.Context, cfg Config) (_ *VM, retErr error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if cfg.Hypervisor.Path == "" {
		cfg.Hypervisor.Path = qemu.DefaultPath
		if cfg.Driver == DriverCLH {
			cfg.Hypervisor.Path = clh.DefaultPath
		}
	}
	cfg.Hypervisor.ID = cfg.ID
	if err := cfg.Hypervisor.CheckFiles(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.StateDir); err == nil {
		return nil, fmt.Errorf("vm %s: state directory %s already exists", cfg.ID, cfg.StateDir)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.ID, err)
	}
	v := &VM{cfg: cfg}
	begin := time.Now()
	defer func() {
		if retErr != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			defer cancel()
			if err := v.Stop(sctx); err != nil {
				log.G(ctx).WithError(err).WithField("vm", cfg.ID).Warn("cleanup after failed start")
			}
		}
	}()
	hcfg := cfg.Hypervisor
	hcfg.ID, hcfg.StateDir = cfg.ID, cfg.StateDir
	// The kernel passes what follows "--" to init as arguments.
	var initArgs []string
	if cfg.Debug {
		initArgs = append(initArgs, "-log-level=debug")
	}
	if cfg.DebugConsole {
		initArgs = append(initArgs, "-debug-console")
	}
	if len(initArgs) > 0 {
		hcfg.KernelParams = append(append(append([]string(nil), hcfg.KernelParams...), "--"), initArgs...)
	}
	if cfg.SharedDir != "" {
		fs, err := virtiofs.Start(ctx, virtiofs.Config{
			Path: cfg.VirtiofsdPath, SocketPath: filepath.Join(cfg.StateDir, "fs.sock"),
			SharedDir: cfg.SharedDir, Cache: cfg.VirtiofsCache, Cgroup: cfg.Cgroup,
			MountNS: cfg.MountNS,
		})
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", cfg.ID, err)
		}
		v.fs = fs
		hcfg.SharedFS = &hypervisor.SharedFS{Socket: fs.SocketPath(), Tag: SharedTag}
	}
	vs, err := v.startVsock(ctx)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.ID, err)
	}
	hcfg.Vsock = vs
	if testHookBeforeHypervisor != nil {
		testHookBeforeHypervisor(cfg.StateDir)
	}
	hv, err := v.newDriver(ctx, hcfg)
	if err != nil {
		return nil, err
	}
	v.hv = hv
	if err := hv.Start(ctx); err != nil {
		// A vsock backend that already failed explains QEMU's failure.
		select {
		case serr := <-v.served:
			if serr != nil {
				err = errors.Join(err, serr)
			}
		default:
		}
		return nil, err
	}
	v.phases.VMMStart = time.Since(begin)
	booted := time.Now()
	connected, err := v.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.ID, err)
	}
	v.phases.GuestBoot = connected.Sub(booted)
	v.phases.AgentReady = time.Since(connected)
	// At info: an operator (and `make bench`) reads boot times without a
	// debug log.
	log.G(ctx).WithFields(log.Fields{
		"vm":          cfg.ID,
		"vmm_start":   v.phases.VMMStart,
		"guest_boot":  v.phases.GuestBoot,
		"agent_ready": v.phases.AgentReady,
		"duration":    v.phases.Total(),
	}).Info("vm started")
	if v.fs != nil {
		go v.watchVirtiofsd(context.WithoutCancel(ctx))
	}
	v.releaseBootFiles(ctx)
	return v, nil
}

const (
	// fsExitGrace is how long a virtiofsd exit waits for QEMU's before it
	// counts as virtiofsd failing: QEMU closes its vhost-user sockets as it
	// exits, and virtiofsd exits when they close.
	fsExitGrace = 2 * time.Second
	// fsStopTimeout bounds stopping QEMU after virtiofsd failed.
	fsStopTimeout = 10 * time.Second
)

// watchVirtiofsd stops QEMU when virtiofsd exits under a running guest.
// Every container's rootfs is on the share, and a request to a virtio-fs
// device nobody serves waits in the guest forever: the pod would hang
// (as microvm pods did while virtiofsd refused their legacy virtio-mmio
// device). A stopped QEMU is a dead sandbox the shim reports; Err says
// why.
func (v *VM) watchVirtiofsd(ctx context.Context) {
	select {
	case <-v.hv.Done():
		return
	case <-v.fs.Done():
	}
	select {
	case <-v.hv.Done():
		return
	case <-time.After(fsExitGrace):
	}
	err := v.fs.Err()
	if err == nil {
		err = fmt.Errorf("virtiofsd (pid %d) exited", v.fs.Pid())
	}
	err = fmt.Errorf("vm %s: the guest's shared directory is gone: %w", v.cfg.ID, err)
	v.fsErr.Store(&err)
	log.G(ctx).WithError(err).Error("stopping the VM")
	sctx, cancel := context.WithTimeout(ctx, fsStopTimeout)
	defer cancel()
	if serr := v.hv.Stop(sctx); serr != nil {
		log.G(ctx).WithError(serr).WithField("vm", v.cfg.ID).Warn("stopping the VM after virtiofsd exited")
	}
}

// bootFileReleaser is a hypervisor that can give back its mappings of the
// guest kernel and initrd once the guest booted (QEMU).
type bootFileReleaser interface {
	ReleaseBootFiles() (int64, error)
}

// releaseBootFiles drops the hypervisor's copies of the kernel and initrd
// from memory, best-effort: a failure costs memory, not the pod.
func (v *VM) releaseBootFiles(ctx context.Context) {
	r, ok := v.hv.(bootFileReleaser)
	if !ok {
		return
	}
	begin := time.Now()
	n, err := r.ReleaseBootFiles()
	if err != nil {
		log.G(ctx).WithError(err).WithField("vm", v.cfg.ID).Debug("kernel and initrd mappings kept")
		return
	}
	log.G(ctx).WithField("vm", v.cfg.ID).Debugf("paged out %d KiB of kernel and initrd mappings in %v", n>>10, time.Since(begin))
}

// Phases says how long the VM's start took, by phase.
func (v *VM) Phases() Phases { return v.phases }

// VirtiofsdPid is virtiofsd's process id, 0 without a shared directory.
func (v *VM) VirtiofsdPid() int {
	if v.fs == nil {
		return 0
	}
	return v.fs.Pid()
}

// VsockConns is the number of open connections of vmpod's vsock backend (0
// with the kernel's vhost-vsock).
func (v *VM) VsockConns() int {
	if v.backend == nil {
		return 0
	}
	return v.backend.Stats().Conns
}

// VsockCounters are the traffic counters of vmpod's vsock backend; false
// with the kernel's vhost-vsock, whose traffic the shim does not see.
func (v *VM) VsockCounters() (device.Counters, bool) {
	if v.backend == nil {
		return device.Counters{}, false
	}
	return v.backend.Counters(), true
}

// fill applies defaults and checks the values.
func (c *Config) fill() error {
	if c.ID == "" || c.StateDir == "" {
		return errors.New("vm: ID and StateDir are required")
	}
	switch c.Driver {
	case "":
		c.Driver = DriverQEMU
	case DriverQEMU, DriverCLH:
	default:
		return fmt.Errorf("vm %s: unknown driver %q (want %s or %s)", c.ID, c.Driver, DriverQEMU, DriverCLH)
	}
	if c.VsockMode == "" {
		c.VsockMode = VsockAuto
	}
	if c.VsockMode == VsockAuto {
		c.VsockMode = VsockVhostUser
		if _, err := os.Stat(vsock.VhostVsockPath); err == nil {
			c.VsockMode = VsockVhost
		}
	}
	switch c.VsockMode {
	case VsockVhost, VsockVhostUser:
	default:
		return fmt.Errorf("vm %s: unknown vsock mode %q (want auto, vhost or vhost-user)", c.ID, c.VsockMode)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("vm %s: negative dial timeout %v", c.ID, c.DialTimeout)
	}
	if c.Jail != nil {
		if err := c.Jail.Validate(); err != nil {
			return fmt.Errorf("vm %s: %w", c.ID, err)
		}
	}
	// sun_path holds 108 bytes with the terminating NUL.
	if p := filepath.Join(c.StateDir, "vsock.sock"); len(p) > 107 {
		return fmt.Errorf("vm %s: socket path %s is longer than 107 bytes; choose a shorter state directory", c.ID, p)
	}
	return nil
}

// newDriver makes the configured driver for hcfg, in the pod's cgroup and
// jailed, as configured.
func (v *VM) newDriver(ctx context.Context, hcfg hypervisor.Config) (driver, error) {
	if v.cfg.Driver != DriverCLH {
		opts, err := v.qemuOptions(ctx)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", v.cfg.ID, err)
		}
		return qemu.New(hcfg, opts...)
	}
	var opts []clh.Option
	if v.cfg.Cgroup != nil {
		opts = append(opts, clh.WithCgroup(v.cfg.Cgroup))
	}
	if v.cfg.Jail != nil {
		id, err := v.cfg.Jail.Allocate(ctx)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", v.cfg.ID, err)
		}
		v.jailID = id
		opts = append(opts, clh.WithJail(clh.Jail{UID: id.UID, GID: id.GID}))
	}
	return clh.New(hcfg, opts...)
}

// qemuOptions places QEMU in the pod's cgroup and jails it, as configured.
func (v *VM) qemuOptions(ctx context.Context) ([]qemu.Option, error) {
	var opts []qemu.Option
	if v.cfg.Cgroup != nil {
		opts = append(opts, qemu.WithCgroup(v.cfg.Cgroup))
	}
	if v.cfg.Jail != nil {
		j, err := v.makeJail(ctx)
		if err != nil {
			return nil, err
		}
		opts = append(opts, qemu.WithJail(j))
	}
	return opts, nil
}

// makeJail reserves QEMU's uid and creates its empty root. Stop releases
// both.
func (v *VM) makeJail(ctx context.Context) (qemu.Jail, error) {
	id, err := v.cfg.Jail.Allocate(ctx)
	if err != nil {
		return qemu.Jail{}, err
	}
	v.jailID = id
	// Root-owned 0700 like the rest of the state: QEMU chroots into it as
	// root and can do nothing there once it is unprivileged.
	dir := v.jailDir()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return qemu.Jail{}, fmt.Errorf("jail directory: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "uid": id.UID, "root": dir}).Debug("jailing qemu")
	return qemu.Jail{Dir: dir, UID: id.UID, GID: id.GID}, nil
}

func (v *VM) jailDir() string { return filepath.Join(v.cfg.StateDir, jailDirName) }

// startVsock sets up the vsock device for the VMM.
func (v *VM) startVsock(ctx context.Context) (*hypervisor.Vsock, error) {
	if v.cfg.Driver == DriverCLH {
		// CH serves the socket itself; the CID is private to it.
		v.hybrid = filepath.Join(v.cfg.StateDir, "vsock.sock")
		return &hypervisor.Vsock{GuestCID: vhostUserCID, HybridSocket: v.hybrid}, nil
	}
	if v.cfg.VsockMode == VsockVhost {
		cid, f, err := vsock.AllocateCID(minKernelCID, maxKernelCID)
		if err != nil {
			return nil, err
		}
		v.cid, v.vhostFD = cid, f
		return &hypervisor.Vsock{GuestCID: cid, VhostFD: f}, nil
	}
	b, err := vsock.NewBackend(filepath.Join(v.cfg.StateDir, "vsock.sock"), vhostUserCID)
	if err != nil {
		return nil, err
	}
	v.backend = b
	v.served = make(chan error, 1)
	// The backend lives as long as the VM, not as long as Start's ctx.
	go func() { v.served <- b.Serve(context.WithoutCancel(ctx)) }()
	return &hypervisor.Vsock{VhostUserSocket: b.SocketPath()}, nil
}

// ServeDebug offers the agent's port, and only it, on ln with hybrid-vsock
// semantics (vsock.DialHybrid), for `vmpod exec`. It returns when ctx ends
// or ln fails. Only the vhost-user backend can serve it.
func (v *VM) ServeDebug(ctx context.Context, ln net.Listener) error {
	if v.backend == nil {
		return fmt.Errorf("vm %s: the debug console needs hypervisor type \"qemu\" with vsock_mode = \"vhost-user\"", v.cfg.ID)
	}
	return v.backend.ServeHybrid(ctx, ln, AgentPort)
}

// Dial opens a new connection to port in the guest.
func (v *VM) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	if v.backend != nil {
		c, err := v.backend.Dial(ctx, port)
		if err != nil {
			return nil, fmt.Errorf("vm %s: vsock port %d: %w", v.cfg.ID, port, err)
		}
		return c, nil
	}
	if v.hybrid != "" {
		return vsock.DialHybrid(ctx, v.hybrid, port)
	}
	return vsock.DialKernel(ctx, v.cid, port)
}

// connect dials the agent until it answers Check, QEMU exits, the vsock
// backend fails or DialTimeout passes. It returns when the connection that
// answered was made.
func (v *VM) connect(ctx context.Context) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.DialTimeout)
	defer cancel()
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-v.hv.Done():
				return time.Time{}, fmt.Errorf("qemu exited before the agent answered: %w", errors.Join(v.hv.Err(), lastErr, v.consoleErr()))
			case err := <-v.served:
				// The backend also ends when QEMU exits; report the cause.
				select {
				case <-v.hv.Done():
					return time.Time{}, fmt.Errorf("qemu exited before the agent answered: %w", errors.Join(v.hv.Err(), v.consoleErr()))
				case <-time.After(time.Second):
				}
				return time.Time{}, fmt.Errorf("vsock backend failed before the agent answered: %w", errors.Join(err, v.consoleErr()))
			case <-ctx.Done():
				return time.Time{}, fmt.Errorf("agent did not answer within %v: %w", v.cfg.DialTimeout, errors.Join(lastErr, v.consoleErr()))
			case <-time.After(50 * time.Millisecond):
			}
		}
		resp, connected, err := v.check(ctx)
		if err == nil {
			log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "agent": resp.GetVersion(), "kernel": resp.GetKernelRelease()}).Debug("agent answered")
			return connected, nil
		}
		lastErr = err
	}
}

// check makes one attempt: dial, Check; it keeps the client on success.
// connected is when the dial succeeded.
func (v *VM) check(ctx context.Context) (_ *agentpb.CheckResponse, connected time.Time, _ error) {
	actx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	conn, err := v.Dial(actx, AgentPort)
	if err != nil {
		return nil, time.Time{}, err
	}
	connected = time.Now()
	var opts []ttrpc.ClientOpts
	if v.cfg.AgentInterceptor != nil {
		opts = append(opts, ttrpc.WithUnaryClientInterceptor(v.cfg.AgentInterceptor))
	}
	client := ttrpc.NewClient(conn, opts...)
	agent := agentpb.NewAgentClient(client)
	resp, err := agent.Check(actx, &agentpb.CheckRequest{})
	if err != nil {
		client.Close()
		return nil, time.Time{}, fmt.Errorf("agent check: %w", err)
	}
	v.client, v.agent = client, agent
	return resp, connected, nil
}

func (v *VM) consoleErr() error {
	if t := v.hv.ConsoleTail(); t != "" {
		return fmt.Errorf("guest console:\n%s", t)
	}
	return nil
}

// Agent is the typed client of the guest agent.
func (v *VM) Agent() agentpb.AgentService { return v.agent }

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.hv.Done() }

// Err is why QEMU exited (with its stderr), or that virtiofsd did first
// and QEMU was stopped for it (watchVirtiofsd); nil while running or after
// a clean exit.
func (v *VM) Err() error {
	if e := v.fsErr.Load(); e != nil {
		return errors.Join(*e, v.hv.Err())
	}
	return v.hv.Err()
}

// Pid is QEMU's process id.
func (v *VM) Pid() int { return v.hv.Pid() }

// GuestSharedDir is where the guest mounts the shared directory when the
// caller passes SharedMount to CreateSandbox.
func (v *VM) GuestSharedDir() string { return GuestSharedDir }

// SharedMount is the guest mount of the shared directory, for
// CreateSandboxRequest.Mounts; nil without a shared directory.
func (v *VM) SharedMount() *agentpb.Mount {
	if v.cfg.SharedDir == "" {
		return nil
	}
	return &agentpb.Mount{Type: "virtiofs", Source: SharedTag, Target: GuestSharedDir}
}

// Stop closes the agent connection, quits QEMU (killing it when ctx ends
// first), stops the vsock backend and virtiofsd, removes the state
// directory (and QEMU's jail in it) and releases QEMU's uid. It is
// idempotent.
func (v *VM) Stop(ctx context.Context) error {
	v.stopOnce.Do(func() { v.stopErr = v.stop(ctx) })
	return v.stopErr
}

func (v *VM) stop(ctx context.Context) error {
	var errs []error
	if v.client != nil {
		v.client.Close()
	}
	if v.hv != nil {
		if err := v.hv.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if v.backend != nil {
		if err := v.backend.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("vsock backend: %w", err))
		}
	}
	if v.fs != nil {
		if err := v.fs.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if v.vhostFD != nil {
		v.vhostFD.Close()
	}
	if err := os.RemoveAll(v.cfg.StateDir); err != nil {
		errs = append(errs, err)
	}
	// After QEMU is gone. Should it have survived SIGKILL, its uid is still
	// not handed out again: the allocator skips uids that processes run as.
	if err := v.jailID.Release(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vm %s: stop: %w", v.cfg.ID, err)
	}
	return nil
}

// onlineTimeout bounds the wait for the guest to online what was added.
const onlineTimeout = 30 * time.Second

// Resources is what the guest has now (boot plus hot-plugged) and the most
// Grow can reach (equal when the machine or configuration leaves no room).
func (v *VM) Resources() (cur, max hypervisor.Resources) {
	hp, ok := v.hv.(hypervisor.Hotplugger)
	if !ok {
		boot := hypervisor.Resources{VCPUs: v.cfg.Hypervisor.VCPUs, MemoryMiB: v.cfg.Hypervisor.MemoryMiB}
		return boot, boot
	}
	return hp.Resources(), hp.MaxResources()
}

// Grow hot-adds vCPUs and memory until the guest has at least want (capped
// at the maximum), has the agent online them, and waits, at most
// onlineTimeout, until the guest has them. It returns what the VM has,
// also on error. What was plugged stays plugged when a later step fails:
// the guest keeps it (offline, if it could not online it).
func (v *VM) Grow(ctx context.Context, want hypervisor.Resources) (hypervisor.Resources, error) {
	hp, ok := v.hv.(hypervisor.Hotplugger)
	if !ok {
		cur, _ := v.Resources()
		return cur, fmt.Errorf("vm %s: the %s driver cannot hot-plug", v.cfg.ID, v.cfg.Driver)
	}
	before := hp.Resources()
	cur, err := hp.Grow(ctx, want)
	if cur == before {
		return cur, err
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("vm", v.cfg.ID).Warn("hot-plug stopped part way; onlining what was added")
	}
	octx, cancel := context.WithTimeout(ctx, onlineTimeout)
	defer cancel()
	// Memory is onlined by 128 MiB blocks; a boot size that is not whole
	// blocks still shows as whole blocks.
	wantMiB := uint64(cur.MemoryMiB) &^ 127
	resp, oerr := v.agent.OnlineCPUMem(octx, &agentpb.OnlineCPUMemRequest{Vcpus: uint32(cur.VCPUs), MemoryMib: wantMiB})
	switch {
	case oerr != nil:
		oerr = fmt.Errorf("vm %s: online hot-plugged CPUs and memory in the guest: %w", v.cfg.ID, oerr)
	case resp.GetVcpus() < uint32(cur.VCPUs) || resp.GetMemoryMib() < wantMiB:
		oerr = fmt.Errorf("vm %s: the guest onlined %d of %d vCPUs and %d of %d MiB within %v",
			v.cfg.ID, resp.GetVcpus(), cur.VCPUs, resp.GetMemoryMib(), wantMiB, onlineTimeout)
	default:
		log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "vcpus": resp.GetVcpus(), "memory_mib": resp.GetMemoryMib(), "mem_total_kib": resp.GetMemTotalKib()}).Info("guest grew")
	}
	return cur, errors.Join(err, oerr)
}
