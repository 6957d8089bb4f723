package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
	cshim "github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"github.com/vmpod/vmpod/shim/rootfs"
	"golang.org/x/sys/unix"
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

// bundleSandbox reads the bundle's annotations (cwd is the bundle) and
// returns the sandbox the container belongs to: its pod's when CRI says it
// joins one, else its own.
func bundleSandbox(id string) (sandboxID string, joins bool) {
	data, err := os.ReadFile("config.json")
	if err != nil {
		return id, false
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(data, &spec) != nil {
		return id, false
	}
	if spec.Annotations[annotationContainerType] == containerTypeContainer {
		if sb := spec.Annotations[annotationSandboxID]; sb != "" && rootfs.ValidID(sb) == nil {
			return sb, true
		}
	}
	return id, false
}

// Start starts the long-lived shim for container id, or returns the
// address of the shim of the pod it joins.
func (m *Manager) Start(ctx context.Context, id string, opts cshim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	grouping, _ := bundleSandbox(id)
	address, err := cshim.SocketAddress(ctx, opts.Address, grouping)
	if err != nil {
		return "", err
	}
	socket, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket %s: %w", address, err)
		}
		// The pod's shim already runs: the container joins it.
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
	return address, nil
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
// processes, unmounts what the shim mounted and removes its state. For a
// container that joined a pod, only that container's part goes.
func (m *Manager) Stop(ctx context.Context, id string) (cshim.StopStatus, error) {
	sandboxID, joins := bundleSandbox(id)
	dir := filepath.Join(StateRoot, sandboxID)
	if joins {
		if err := rootfs.Remove(ctx, filepath.Join(dir, SharedDirName, id)); err != nil {
			return cshim.StopStatus{}, err
		}
	} else {
		killUnder(ctx, dir)
		if err := rootfs.Remove(ctx, dir); err != nil {
			return cshim.StopStatus{}, err
		}
	}
	return cshim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(unix.SIGKILL)}, nil
}

// killUnder kills the processes whose command line names a path under dir
// (QEMU and virtiofsd name their sockets there) and waits, briefly, for
// them to go, so that their mounts and sockets can be removed.
func killUnder(ctx context.Context, dir string) {
	pids := processesUnder(dir)
	for _, pid := range pids {
		log.G(ctx).WithField("pid", pid).WithField("sandbox_dir", dir).Info("killing leftover sandbox process")
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) && unix.Kill(pid, 0) == nil && !isZombie(pid) {
			time.Sleep(20 * time.Millisecond)
		}
	}
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
