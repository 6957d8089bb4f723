// Package virtiofs runs virtiofsd, the vhost-user daemon that exports a
// host directory to a guest's virtio-fs device.
//
// virtiofsd puts itself in a mount namespace of its own, a slave of the
// one it starts in (Config.MountNS: the sandbox's, see internal/mountns;
// nil: the caller's) at the moment it starts. For mounts made under the
// shared directory later (a container's rootfs) to reach the guest, the
// directory must be a mount point with shared propagation, in that
// namespace, before virtiofsd starts: Start makes it one unless it already
// is, and Stop undoes what Start did.
package virtiofs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/internal/mountns"
	"github.com/vmpod/vmpod/internal/tail"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// DefaultPath is Debian's C virtiofsd (package qemu-system-common).
const DefaultPath = "/usr/lib/qemu/virtiofsd"

// Cache modes of virtiofsd.
const (
	CacheAuto   = "auto"
	CacheNone   = "none"
	CacheAlways = "always"
)

const (
	maxStderr = 32 << 10
	// termGrace is how long Stop waits after SIGTERM when the caller's
	// context has no deadline.
	termGrace = 3 * time.Second
)

// Config describes one virtiofsd.
type Config struct {
	// Path is the virtiofsd binary; empty means DefaultPath.
	Path string
	// SocketPath is the vhost-user socket QEMU connects to.
	SocketPath string
	// SharedDir is the exported directory; it is created if missing.
	SharedDir string
	// Cache is CacheAuto (default), CacheNone or CacheAlways.
	Cache string
	// Cgroup, when set, receives virtiofsd (and the child it serves from)
	// as soon as it starts.
	Cgroup *hostcgroup.Group
	// ExtraArgs are appended to virtiofsd's arguments.
	ExtraArgs []string
	// MountNS is the mount namespace virtiofsd starts in, where the
	// shared directory's mounts are made; nil: the caller's.
	MountNS *mountns.NS
}

// Daemon is a running virtiofsd.
type Daemon struct {
	cfg      Config
	cmd      *exec.Cmd
	waited   <-chan error // cmd.Wait's result (lockedfork)
	madeBind bool         // Start bind-mounted SharedDir onto itself

	stopOnce sync.Once
	stopErr  error
	stderr   *tail.Buffer
	done     chan struct{}
	exitErr  error
}

// args is virtiofsd's command line; the listening socket is fd 3.
func (c Config) args() []string {
	a := []string{
		"--fd=3",
		"-o", "source=" + c.SharedDir,
		"-o", "cache=" + c.Cache,
		"-o", "sandbox=namespace",
		// Give each mount under the share its own device number in the
		// guest, so inode numbers of different mounts cannot collide.
		"-o", "announce_submounts",
		"-o", "no_posix_lock",
		"--thread-pool-size=1",
	}
	return append(a, c.ExtraArgs...)
}

// Start prepares SharedDir's propagation, listens on SocketPath and starts
// virtiofsd serving it. On error nothing is left behind.
func Start(ctx context.Context, cfg Config) (_ *Daemon, retErr error) {
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.Cache == "" {
		cfg.Cache = CacheAuto
	}
	switch cfg.Cache {
	case CacheAuto, CacheNone, CacheAlways:
	default:
		return nil, fmt.Errorf("virtiofsd: unknown cache mode %q (want auto, none or always)", cfg.Cache)
	}
	if cfg.SocketPath == "" || cfg.SharedDir == "" {
		return nil, errors.New("virtiofsd: socket path and shared directory are required")
	}
	if st, err := os.Stat(cfg.Path); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("virtiofsd binary %s: not a regular file (%v)", cfg.Path, err)
	}
	if err := os.MkdirAll(cfg.SharedDir, 0o711); err != nil {
		return nil, fmt.Errorf("virtiofsd: shared directory: %w", err)
	}
	d := &Daemon{cfg: cfg, stderr: tail.New(maxStderr), done: make(chan struct{})}
	var made bool
	err := cfg.MountNS.Do(func() (err error) {
		made, err = makeShared(cfg.SharedDir)
		return err
	})
	if err != nil {
		return nil, err
	}
	d.madeBind = made
	defer func() {
		if retErr != nil {
			d.undoShared(ctx)
		}
	}()

	os.Remove(cfg.SocketPath) // stale socket from a crashed run
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.SocketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("virtiofsd: listen on %s: %w", cfg.SocketPath, err)
	}
	// virtiofsd owns the socket from here; this process keeps no copy.
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	l.Close()
	if err != nil {
		os.Remove(cfg.SocketPath)
		return nil, fmt.Errorf("virtiofsd: socket %s: %w", cfg.SocketPath, err)
	}
	defer lf.Close()

	cmd := exec.Command(cfg.Path, cfg.args()...)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stderr = d.stderr
	// Killed with this process, but not with the OS thread that forks it
	// (see lockedfork), in the sandbox's mount namespace.
	waited, err := cfg.MountNS.Start(cmd)
	if err != nil {
		os.Remove(cfg.SocketPath)
		return nil, fmt.Errorf("virtiofsd: starting %s: %w", cfg.Path, err)
	}
	d.cmd, d.waited = cmd, waited
	log.G(ctx).WithFields(log.Fields{"pid": cmd.Process.Pid, "shared": cfg.SharedDir, "socket": cfg.SocketPath}).Debug("virtiofsd started")
	go d.wait()
	if cfg.Cgroup != nil {
		if err := cfg.Cgroup.Add(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			<-d.done
			os.Remove(cfg.SocketPath)
			return nil, fmt.Errorf("virtiofsd: %w", err)
		}
	}
	return d, nil
}

func (d *Daemon) wait() {
	err := <-d.waited
	if err != nil {
		err = fmt.Errorf("virtiofsd (pid %d, %s) exited: %w%s", d.cmd.Process.Pid, d.cfg.SharedDir, err, d.stderrSuffix())
	}
	d.exitErr = err
	close(d.done)
}

func (d *Daemon) stderrSuffix() string {
	if s := d.stderr.String(); s != "" {
		return "; stderr: " + s
	}
	return ""
}

// Pid is virtiofsd's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// SocketPath is the vhost-user socket.
func (d *Daemon) SocketPath() string { return d.cfg.SocketPath }

// Done is closed when virtiofsd has exited; it exits by itself when its
// vhost-user peer (QEMU) disconnects.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Err is why virtiofsd exited; valid after Done.
func (d *Daemon) Err() error {
	select {
	case <-d.done:
		return d.exitErr
	default:
		return nil
	}
}

// Stop terminates virtiofsd (SIGTERM, then SIGKILL when ctx or a short
// grace period ends), removes its socket and undoes the shared bind mount.
// It is safe to call more than once.
func (d *Daemon) Stop(ctx context.Context) error {
	d.stopOnce.Do(func() { d.stopErr = d.stop(ctx) })
	return d.stopErr
}

func (d *Daemon) stop(ctx context.Context) error {
	select {
	case <-d.done:
	default:
		d.cmd.Process.Signal(unix.SIGTERM)
		grace := time.After(termGrace)
		select {
		case <-d.done:
		case <-ctx.Done():
		case <-grace:
		}
		d.cmd.Process.Kill()
	}
	var errs []error
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		errs = append(errs, fmt.Errorf("virtiofsd (pid %d): still running 10s after SIGKILL", d.cmd.Process.Pid))
	}
	if err := os.Remove(d.cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := d.undoShared(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// makeShared makes dir a mount point with shared propagation, unless it is
// one already; made reports whether it bind-mounted dir onto itself.
func makeShared(dir string) (made bool, err error) {
	dir, err = filepath.EvalSymlinks(dir)
	if err != nil {
		return false, fmt.Errorf("virtiofsd: shared directory: %w", err)
	}
	f, err := os.Open(mountns.MountinfoPath)
	if err != nil {
		return false, fmt.Errorf("virtiofsd: reading mountinfo: %w", err)
	}
	defer f.Close()
	mounts, err := mountinfo.GetMountsFromReader(f, mountinfo.SingleEntryFilter(dir))
	if err != nil {
		return false, fmt.Errorf("virtiofsd: reading mountinfo: %w", err)
	}
	if len(mounts) > 0 {
		if isShared(mounts[len(mounts)-1]) {
			return false, nil
		}
		// A mount point owned by someone else: change only its propagation.
		if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
			return false, fmt.Errorf("virtiofsd: make %s shared: %w", dir, err)
		}
		return false, nil
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return false, fmt.Errorf("virtiofsd: bind %s onto itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return false, fmt.Errorf("virtiofsd: make %s shared: %w", dir, err)
	}
	return true, nil
}

func isShared(m *mountinfo.Info) bool {
	for _, f := range strings.Fields(m.Optional) {
		if strings.HasPrefix(f, "shared:") {
			return true
		}
	}
	return false
}

// undoShared removes the bind mount Start made. Mounts still under the
// directory keep a plain unmount from working; they are detached with it,
// since leaving the bind would leak it.
func (d *Daemon) undoShared(ctx context.Context) error {
	if !d.madeBind {
		return nil
	}
	d.madeBind = false
	err := d.cfg.MountNS.Do(func() error {
		err := unix.Unmount(d.cfg.SharedDir, 0)
		if errors.Is(err, unix.EBUSY) {
			log.G(ctx).WithField("shared", d.cfg.SharedDir).Warn("mounts remain under the shared directory; detaching it")
			err = unix.Unmount(d.cfg.SharedDir, unix.MNT_DETACH)
		}
		return err
	})
	if errors.Is(err, mountns.ErrClosed) {
		return nil // the namespace went, and the bind with it
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("virtiofsd: unmount %s: %w", d.cfg.SharedDir, err)
	}
	return nil
}
