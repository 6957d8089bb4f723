package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/jail"
	"github.com/vmpod/vmpod/internal/mountns"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
	"github.com/vmpod/vmpod/network"
	"github.com/vmpod/vmpod/portfwd"
	"github.com/vmpod/vmpod/portfwd/capture"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/sizing"
	"github.com/vmpod/vmpod/stdiostream"
	"github.com/vmpod/vmpod/vm"
)

// vmSandbox is a sandbox in a QEMU VM.
type vmSandbox struct {
	v      *vm.VM
	shared string
	// net is the pod's network wired to the VM's NICs (no endpoints
	// when the pod has no network namespace of its own).
	net *network.Endpoints
	// stopDebug ends the debug console (nil when it is off) and waits
	// for it.
	stopDebug func()
	// cgroup is the host cgroup the VM's processes run in (nil when the
	// spec names none); it goes with the VM.
	cgroup *hostcgroup.Group
	// leaveCgroup moves the shim back out of cgroup (joinCgroup).
	leaveCgroup func()
	// obs is the sandbox's metrics and pprof sockets.
	obs *observability

	// hotplug: the VM may grow (resource_management and the machine
	// type allow it).
	hotplug bool
	// mounts is the sandbox's mount namespace: the containers' rootfs and
	// volumes, and virtiofsd (see internal/mountns).
	mounts *mountns.NS
	// stopForward ends the pod's port-forwarding (nil without a network
	// namespace, or when it could not start).
	stopForward func()

	// Stop runs once: the health watcher stops a dead sandbox, and
	// Shutdown stops it again.
	stopOnce sync.Once
	stopErr  error
}

var (
	_ Sandbox = (*vmSandbox)(nil)
	_ Resizer = (*vmSandbox)(nil)
)

// NewVMSandbox is the shim's SandboxFactory: it wires the pod's network
// namespace (if the spec names one) to taps, boots a VM sized for the first
// container with one NIC per tap, exporting <Dir>/shared by virtio-fs, and
// creates the sandbox in the guest with that share mounted and the pod's
// interfaces and routes configured.
func NewVMSandbox(ctx context.Context, req SandboxRequest) (_ Sandbox, retErr error) {
	cfg := req.Config
	// The configured driver's table ([hypervisor.qemu] or .clh).
	q := cfg.Hypervisor.Selected()
	paths, err := cfg.Resolve()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	size, err := sizing.For(q, cfg.Runtime.ResourceManagement, req.Spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	// A kernel without vsock or virtio-fs would boot and leave the agent
	// dial to time out; say what it lacks instead (vmpod check does too).
	if _, err := kernelcheck.Check(paths.Kernel); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w: %w", req.ID, err, errdefs.ErrInvalidArgument)
	}
	if cfg.Runtime.Debug {
		// The hypervisor logs the guest console, and the agent's logs with
		// it, at debug level, tagged with the sandbox (ctx carries it).
		log.G(ctx).Logger.SetLevel(logrus.DebugLevel)
	}
	shared := filepath.Join(req.Dir, SharedDirName)
	if err := os.Mkdir(shared, 0o711); err != nil {
		return nil, fmt.Errorf("create shared directory: %w", err)
	}
	nsPath := req.NetNS
	eps, err := network.Setup(ctx, nsPath)
	if err != nil {
		return nil, fmt.Errorf("pod network of sandbox %s: %w", req.ID, err)
	}
	defer func() {
		if retErr != nil {
			if terr := eps.Teardown(context.WithoutCancel(ctx)); terr != nil {
				log.G(ctx).WithError(terr).Warn("tear down pod network after failed sandbox start")
			}
		}
	}()
	cg, err := createCgroup(ctx, req)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			deleteCgroup(context.WithoutCancel(ctx), cg)
		}
	}()
	leaveCgroup := joinCgroup(ctx, req, cg)
	defer func() {
		if retErr != nil {
			leaveCgroup()
		}
	}()
	mounts, err := mountns.New()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", req.ID, err)
	}
	defer func() {
		if retErr != nil {
			mounts.Close()
		}
	}()
	log.G(ctx).WithFields(log.Fields{"vcpus": size.VCPUs, "memory_mib": size.MemoryMiB, "resource_management": cfg.Runtime.ResourceManagement, "machine": q.MachineType, "config": cfg.Source, "netns": nsPath, "nics": len(eps.List)}).Debug("starting VM")
	hcfg := hypervisor.Config{
		Path:         paths.VMM,
		Kernel:       paths.Kernel,
		Initrd:       paths.Initrd,
		KernelParams: q.KernelParams,
		Machine:      q.MachineType,
		Accel:        q.Accel,
		VCPUs:        int(size.VCPUs),
		MemoryMiB:    int(size.MemoryMiB),

		FreePageReporting: q.FreePageReporting,
		TCGTBSizeMiB:      int(q.TCGTBSize),
	}
	hotplug := hotplugAllowed(ctx, cfg)
	if hotplug {
		limit := sizing.Limits(q)
		hcfg.MaxVCPUs, hcfg.MaxMemoryMiB = int(limit.VCPUs), int(limit.MemoryMiB)
	}
	for _, ep := range eps.List {
		hcfg.Net = append(hcfg.Net, hypervisor.NetDevice{Tap: ep.Tap, MAC: ep.MAC, MTU: ep.MTU})
	}
	obs := newObservability(req)
	v, err := vm.Start(ctx, vm.Config{
		ID:            req.ID,
		StateDir:      filepath.Join(req.Dir, "vm"),
		Hypervisor:    hcfg,
		VsockMode:     q.VsockMode,
		VirtiofsdPath: paths.Virtiofsd,
		SharedDir:     shared,
		DialTimeout:   cfg.Agent.DialTimeout.Duration,
		Debug:         cfg.Agent.Debug,
		DebugConsole:  cfg.Runtime.DebugConsole,
		Jail:          jailRange(q),
		Cgroup:        cg,
		Driver:        cfg.Hypervisor.Type,

		AgentInterceptor: obs.interceptor(),
		MountNS:          mounts,
	})
	if err != nil {
		return nil, err
	}
	var stopDebug func()
	err = setupGuest(ctx, v, req, eps, cfg.Agent.DialTimeout.Duration)
	if err == nil && cfg.Runtime.DebugConsole {
		stopDebug, err = serveDebug(ctx, v, filepath.Join(req.Dir, DebugSocketName))
	}
	if err != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		if serr := v.Stop(sctx); serr != nil {
			log.G(ctx).WithError(serr).Warn("stop VM after failed sandbox creation")
		}
		return nil, err
	}
	obs.start(ctx, req, v)
	return &vmSandbox{v: v, shared: shared, net: eps, stopDebug: stopDebug, cgroup: cg, leaveCgroup: leaveCgroup, hotplug: hotplug, obs: obs, mounts: mounts,
		stopForward: startForward(ctx, v, nsPath)}, nil
}

// hotplugAllowed says whether the pod's VM may grow while it runs: the
// configuration asks for hot-plug and the machine type can do it. A
// machine that cannot is logged, and the VM keeps its boot size (static
// sizing).
func hotplugAllowed(ctx context.Context, cfg *config.Config) bool {
	if !cfg.Runtime.Hotplug() {
		return false
	}
	if err := hypervisor.HotplugSupport(cfg.Hypervisor.QEMU.MachineType); err != nil {
		log.G(ctx).WithError(err).Warn("no CPU or memory hot-plug: the VM keeps the size it boots with (static sizing)")
		return false
	}
	return true
}

// Resources is what the VM has and the most it may grow to; equal when
// it may not grow.
func (s *vmSandbox) Resources() (cur, max hypervisor.Resources) {
	cur, max = s.v.Resources()
	if !s.hotplug {
		max = cur
	}
	return cur, max
}

// Grow hot-adds vCPUs and memory to the VM (vm.VM.Grow).
func (s *vmSandbox) Grow(ctx context.Context, want hypervisor.Resources) (hypervisor.Resources, error) {
	if !s.hotplug {
		cur, _ := s.v.Resources()
		return cur, nil
	}
	return s.v.Grow(ctx, want)
}

// startForward captures the connections to localhost in the pod's network
// namespace on the host, where containerd's CRI port-forward dials, and
// carries each to the same port in the guest (package portfwd). A failure
// costs only port-forwarding: logged, and the pod runs.
func startForward(ctx context.Context, v *vm.VM, nsPath string) (stop func()) {
	if nsPath == "" {
		return nil
	}
	c, err := capture.Loopback(nsPath)
	if err != nil {
		log.G(ctx).WithError(err).Warn("no port-forwarding into this pod")
		return nil
	}
	dial := func(ctx context.Context) (net.Conn, error) { return v.Dial(ctx, portfwd.VsockPort) }
	f := portfwd.NewForwarder(ctx, c.Listeners, dial, portfwd.MaxForwards)
	return func() {
		if err := errors.Join(f.Close(), c.Close()); err != nil {
			log.G(ctx).WithError(err).Warn("stop port-forwarding")
		}
	}
}

// createCgroup creates the host cgroup the sandbox's spec names
// (linux.cgroupsPath), for QEMU and virtiofsd: where runc would put the
// pause process. containerd's pod stats and the kubelet's pod accounting
// read it. Nil when the spec names none.
func createCgroup(ctx context.Context, req SandboxRequest) (*hostcgroup.Group, error) {
	if req.Spec == nil || req.Spec.Linux == nil || req.Spec.Linux.CgroupsPath == "" {
		return nil, nil
	}
	cg, err := hostcgroup.Create(req.Spec.Linux.CgroupsPath)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: linux.cgroupsPath: %w", req.ID, err)
	}
	log.G(ctx).WithField("cgroup", req.Spec.Linux.CgroupsPath).Debug("VM processes go into the sandbox's cgroup")
	return cg, nil
}

// joinCgroup moves the shim into the sandbox's cgroup, with QEMU and
// virtiofsd, as Kata's sandbox_cgroup_only: the CPU the shim spends on the
// pod (its I/O copies, the agent's calls) is then counted with the pod's,
// where the kubelet and containerd's pod stats look, and the kubelet's pod
// limits bound it too. Unless the shim was put elsewhere on purpose
// (KeepShimCgroup: runc's ShimCgroup option wins). A shim serves one
// sandbox, so one cgroup. Failing to move only costs accounting: logged.
// The returned func moves the shim back, before the cgroup is deleted.
func joinCgroup(ctx context.Context, req SandboxRequest, cg *hostcgroup.Group) (leave func()) {
	if cg == nil || req.KeepShimCgroup {
		return func() {}
	}
	back, err := cg.Join()
	if err != nil {
		log.G(ctx).WithError(err).Warn("the shim stays out of the sandbox's cgroup: its CPU is not counted with the pod's")
		return func() {}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if err := back(); err != nil {
				log.G(ctx).WithError(err).Warn("move the shim out of the sandbox's cgroup")
			}
		})
	}
}

// cgroupDeleteTimeout bounds the wait for the VM's processes to leave its
// cgroup once they were killed.
const cgroupDeleteTimeout = 5 * time.Second

// deleteCgroup removes the sandbox's cgroup (nil: nothing to do) once its
// processes are gone, logging a failure: it must not keep the pod from
// going.
func deleteCgroup(ctx context.Context, cg *hostcgroup.Group) {
	if cg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, cgroupDeleteTimeout)
	defer cancel()
	if err := cg.Delete(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("remove the sandbox's cgroup")
	}
}

// jailRange is the uid range QEMU is jailed with, nil when jail = false.
// The lock directory is always the host-wide default, so that every shim
// on the host draws from one pool.
func jailRange(q config.QEMU) *jail.Range {
	if !q.Jail {
		return nil
	}
	return &jail.Range{LockDir: jail.DefaultLockDir, Start: q.JailUIDStart, Count: q.JailUIDCount}
}

// DebugSocketName is the hybrid-vsock socket, in the sandbox's state
// directory, that `vmpod exec` dials when [runtime] debug_console = true.
const DebugSocketName = "debug.sock"

// serveDebug offers the agent's port on a Unix socket at path, for host
// root only (0600, in the sandbox's 0700 directory), until stop is called.
func serveDebug(ctx context.Context, v *vm.VM, path string) (stop func(), err error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("debug console: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("debug console: %w", err)
	}
	// The console lives as long as the sandbox, not as long as this request.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := v.ServeDebug(sctx, ln); err != nil {
			log.G(ctx).WithError(err).Warn("debug console stopped")
		}
		ln.Close() // removes the socket file
	}()
	log.G(ctx).WithField("socket", path).Warn("debug console on: host root can run commands in the guest")
	return func() { cancel(); <-done }, nil
}

// setupGuest creates the sandbox in the guest: the shared directory, the
// pod's hostname, the loopback, the pod's interfaces and routes. A guest
// that stops answering (a virtio-fs mount that never completes, say) gets
// as long as the agent had to come up, not forever.
func setupGuest(ctx context.Context, v *vm.VM, req SandboxRequest, eps *network.Endpoints, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hostname := ""
	if req.Spec != nil {
		hostname = req.Spec.Hostname
	}
	agent := v.Agent()
	_, err := agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{
		SandboxId: req.ID,
		Hostname:  hostname,
		Mounts:    []*agentpb.Mount{v.SharedMount()},
	})
	if err != nil {
		return fromAgent(err, "create sandbox %s in the guest", req.ID)
	}
	// The containers share the guest's network namespace, whose loopback
	// the kernel leaves down; up, it gets 127.0.0.1 and ::1 by itself.
	if _, err := agent.UpdateInterface(ctx, &agentpb.UpdateInterfaceRequest{Interface: &agentpb.Interface{Name: "lo"}}); err != nil {
		return fromAgent(err, "bring up the guest loopback of sandbox %s", req.ID)
	}
	for _, itf := range eps.Interfaces() {
		if _, err := agent.UpdateInterface(ctx, &agentpb.UpdateInterfaceRequest{Interface: itf}); err != nil {
			return fromAgent(err, "configure guest interface %s (%s) of sandbox %s", itf.GetName(), itf.GetMac(), req.ID)
		}
	}
	if len(eps.Routes) > 0 {
		if _, err := agent.UpdateRoutes(ctx, &agentpb.UpdateRoutesRequest{Routes: &agentpb.Routes{Routes: eps.Routes}}); err != nil {
			return fromAgent(err, "configure guest routes of sandbox %s", req.ID)
		}
	}
	return nil
}

func (s *vmSandbox) Agent() agentpb.AgentService { return s.v.Agent() }
func (s *vmSandbox) SharedDir() string           { return s.shared }
func (s *vmSandbox) GuestSharedDir() string      { return s.v.GuestSharedDir() }
func (s *vmSandbox) Done() <-chan struct{}       { return s.v.Done() }
func (s *vmSandbox) MountNS() *mountns.NS        { return s.mounts }

// DialStdio dials the agent's stdio port through the VM's vsock, as the
// agent API and port-forwards are, whichever the driver (vhost-user,
// kernel or hybrid vsock).
func (s *vmSandbox) DialStdio(ctx context.Context) (net.Conn, error) {
	return s.v.Dial(ctx, stdiostream.VsockPort)
}

// Stop stops the VM (its daemons and state go with it), then removes the
// taps and redirects from the pod's network namespace, leaving it as CNI
// made it.
func (s *vmSandbox) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.obs.stop()
		if s.stopDebug != nil {
			s.stopDebug()
		}
		if s.stopForward != nil {
			s.stopForward()
		}
		s.stopErr = s.v.Stop(ctx)
		// virtiofsd is gone: the namespace goes with the last mount in it.
		s.mounts.Close()
		s.leaveCgroup()
		deleteCgroup(ctx, s.cgroup)
		if nerr := s.net.Teardown(ctx); nerr != nil {
			s.stopErr = errors.Join(s.stopErr, fmt.Errorf("tear down pod network: %w", nerr))
		}
	})
	return s.stopErr
}
