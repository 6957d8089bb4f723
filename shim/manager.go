package shim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	cshim "github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/hypervisor/jail"
	"github.com/vmpod/vmpod/network"
	"github.com/vmpod/vmpod/shim/rootfs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// CRI annotations that place a container in an existing pod.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	containerTypeContainer  = "container"
)

// SharedDirName is the directory of a sandbox's state directory that
// virtio-fs exports to the guest.
const SharedDirName = "shared"

// Manager implements the shim binary's start and delete actions.
type Manager struct {
	name string
}

var _ cshim.Manager = (*Manager)(nil)

// NewManager returns the manager of the runtime called name
// ("io.containerd.kata.v2").
func NewManager(name string) *Manager { return &Manager{name: name} }

// Name is the runtime's name.
func (m *Manager) Name() string { return m.name }

// bundleSpec reads the spec of the bundle (cwd) for the start and delete
// actions; nil when there is none or it cannot be parsed.
func bundleSpec() *specs.Spec {
	spec, err := readSpec(".")
	if err != nil {
		return nil
	}
	return spec
}

// bundleSandbox returns the sandbox the bundle's container belongs to: its
// pod's when CRI says it joins one, else its own.
func bundleSandbox(id string, spec *specs.Spec) (sandboxID string, joins bool) {
	if spec == nil {
		return id, false
	}
	role, err := roleOf(id, spec)
	if err != nil || rootfs.ValidID(role.sandboxID) != nil {
		return id, false
	}
	return role.sandboxID, role.joins
}

// Start starts the long-lived shim for container id, or returns the
// address of the shim of the pod it joins.
func (m *Manager) Start(ctx context.Context, id string, opts cshim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	grouping, joins := bundleSandbox(id, bundleSpec())
	address, err := cshim.SocketAddress(ctx, opts.Address, grouping)
	if err != nil {
		return "", err
	}
	if joins {
		// A container of a pod runs in the pod's VM, whose shim the
		// sandbox container started.
		if !cshim.CanConnect(address) {
			return "", fmt.Errorf("container %s: sandbox %s has no running shim: %w", id, grouping, errdefs.ErrNotFound)
		}
		if err := cshim.WriteAddress("address", address); err != nil {
			return "", err
		}
		return address, nil
	}
	socket, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket %s: %w", address, err)
		}
		// A shim for this id already runs (start called twice).
		if cshim.CanConnect(address) {
			if err := cshim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := cshim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket %s: %w", address, err)
		}
		if socket, err = cshim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket %s: %w", address, err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = cshim.RemoveSocket(address)
		}
	}()
	if err := cshim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	cmd, err := shimCommand(ns, id, opts)
	if err != nil {
		return "", err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim: %w", err)
	}
	// The shim outlives this process; reap it if it dies first.
	go cmd.Wait() //nolint:errcheck
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	if err := joinShimCgroup(ctx, os.Stdin, cmd.Process.Pid); err != nil {
		return "", err
	}
	return address, nil
}

// maxRuntimeOptions bounds the runtime options read from stdin.
const maxRuntimeOptions = 1 << 20

// runcOptionsType is the type of runc's runtime options, which
// containerd's clients also hand to other shims
// (containerd.WithRuntime(name, &options.Options{...})).
const runcOptionsType = "containerd.runc.v1.Options"

// joinShimCgroup moves the long-lived shim (pid) into the ShimCgroup of
// the runtime options containerd writes to the start action's stdin, as
// runc's shim does. Options of another type carry no shim cgroup, and
// options that cannot be read are ignored (logged), as runc's shim does;
// a ShimCgroup that cannot be joined fails the start.
func joinShimCgroup(ctx context.Context, stdin io.Reader, pid int) error {
	cgroup, err := shimCgroupOption(stdin)
	if err != nil {
		log.G(ctx).WithError(err).Warn("runtime options on stdin ignored")
		return nil
	}
	if cgroup == "" {
		return nil
	}
	if err := hostcgroup.Join(cgroup, pid); err != nil {
		return fmt.Errorf("runtime option ShimCgroup %q: %w", cgroup, err)
	}
	return nil
}

// shimCgroupOption returns the ShimCgroup of runc-typed runtime options
// (a protobuf Any, as containerd marshals them), or "".
func shimCgroupOption(r io.Reader) (string, error) {
	if r == nil {
		return "", nil
	}
	data, err := io.ReadAll(io.LimitReader(r, maxRuntimeOptions+1))
	if err != nil {
		return "", fmt.Errorf("read runtime options: %w", err)
	}
	if len(data) == 0 {
		return "", nil
	}
	if len(data) > maxRuntimeOptions {
		return "", fmt.Errorf("runtime options exceed %d bytes", maxRuntimeOptions)
	}
	var opts anypb.Any
	if err := proto.Unmarshal(data, &opts); err != nil {
		return "", fmt.Errorf("decode runtime options: %w", err)
	}
	return shimCgroupOf(&opts)
}

// shimCgroupOf returns the ShimCgroup of runtime options if they are
// runc-typed, or "". Create sees the same options (CreateTaskRequest.Options).
func shimCgroupOf(opts *anypb.Any) (string, error) {
	if !strings.HasSuffix(opts.GetTypeUrl(), runcOptionsType) {
		return "", nil
	}
	var o runcoptions.Options
	if err := proto.Unmarshal(opts.GetValue(), &o); err != nil {
		return "", fmt.Errorf("decode runtime options %s: %w", opts.GetTypeUrl(), err)
	}
	return o.ShimCgroup, nil
}

func shimCommand(ns, id string, opts cshim.StartOpts) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=4")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// Stop cleans up after a shim that is gone: it kills the sandbox's VM
// processes, unmounts what the shim mounted, removes its state and its taps
// and redirects from the pod's network namespace (and the namespace it made
// for a standalone container, which is in its state), and runs the
// container's poststop hooks. For a container that joined a pod, only that
// container's part goes.
func (m *Manager) Stop(ctx context.Context, id string) (cshim.StopStatus, error) {
	spec := bundleSpec()
	sandboxID, joins := bundleSandbox(id, spec)
	dir := filepath.Join(StateRoot, sandboxID)
	netns := network.NamespacePath(spec)
	if netns == "" {
		netns = sandboxNetns(dir)
	}
	if joins {
		poststopAfterCrash(ctx, id, spec, filepath.Join(dir, SharedDirName, id), netns)
		if err := rootfs.Remove(ctx, nil, filepath.Join(dir, SharedDirName, id)); err != nil {
			return cshim.StopStatus{}, err
		}
	} else {
		waitShimGone(ctx, sandboxID)
		killUnder(ctx, dir)
		poststopAfterCrash(ctx, id, spec, dir, netns)
		if spec != nil && spec.Linux != nil && spec.Linux.CgroupsPath != "" {
			if cg, err := hostcgroup.Open(spec.Linux.CgroupsPath); err == nil {
				deleteCgroup(ctx, cg)
			}
		}
		if err := rootfs.Remove(ctx, nil, dir); err != nil {
			return cshim.StopStatus{}, err
		}
		if err := network.Cleanup(ctx, network.NamespacePath(spec)); err != nil {
			return cshim.StopStatus{}, fmt.Errorf("clean up pod network of sandbox %s: %w", sandboxID, err)
		}
	}
	return cshim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(unix.SIGKILL)}, nil
}

// shimExitWait bounds how long the delete action waits for a shim that
// still answers to finish its own teardown.
const shimExitWait = 10 * time.Second

// waitShimGone waits, briefly, while the shim whose address the bundle
// records still accepts connections: containerd runs the delete action as
// soon as its connection to the shim closes, which may be while the shim
// is still stopping its VM after Shutdown.
func waitShimGone(ctx context.Context, sandboxID string) {
	data, err := readSmall("address")
	if err != nil {
		return
	}
	address := strings.TrimSpace(string(data))
	deadline := time.Now().Add(shimExitWait)
	for cshim.CanConnect(address) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			log.G(ctx).WithField("sandbox", sandboxID).Warn("shim still running; cleaning up under it")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killUnder kills the processes whose command line names a path under dir
// (QEMU and virtiofsd name their sockets there) and waits, briefly, for
// them to go, so that their mounts and sockets can be removed.
func killUnder(ctx context.Context, dir string) {
	pids := processesUnder(dir)
	var uids []uint32
	for _, pid := range pids {
		log.G(ctx).WithField("pid", pid).WithField("sandbox_dir", dir).Info("killing leftover sandbox process")
		if uid, ok := processUID(pid); ok && uid != 0 {
			uids = append(uids, uid) // a jailed QEMU's
		}
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) && unix.Kill(pid, 0) == nil && !isZombie(pid) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The dead shim held the jailed QEMU's uid; its lock file goes too.
	for _, uid := range uids {
		if err := jail.Reclaim(jail.DefaultLockDir, uid); err != nil {
			log.G(ctx).WithError(err).WithField("uid", uid).Warn("reclaim the jail uid of a dead sandbox")
		}
	}
}

// processUID returns the real uid of process pid.
func processUID(pid int) (uint32, bool) {
	status, err := readSmall(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			uid, err := strconv.ParseUint(f[1], 10, 32)
			return uint32(uid), err == nil
		}
	}
	return 0, false
}

func processesUnder(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	needle := []byte(filepath.Clean(dir) + "/")
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := readSmall(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

func isZombie(pid int) bool {
	data, err := readSmall(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	if i := bytes.LastIndexByte(data, ')'); i >= 0 && i+2 < len(data) {
		return data[i+2] == 'Z'
	}
	return false
}
