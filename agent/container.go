package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/cgroups"
	cgmanager "github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/utils"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Container is one libcontainer container and its processes.
type Container struct {
	id           string
	lc           *libcontainer.Container
	rootfsMounts []mountSpec     // undone by Remove, last first
	cgroup       cgroups.Manager // the container's cgroup, for kill-all and removal
	cgroupPaths  map[string]string
	reaper       *Reaper
	init         *Process

	mu        sync.Mutex          // guards execs, execOrder and removing
	execs     map[string]*Process // exec id → process
	execOrder []string            // exec ids, oldest first
	removing  bool                // Remove began: no new exec may start
}

// maxFinishedExecs bounds the finished execs a container keeps (exited,
// output read to EOF), so that a long-lived container probed by exec
// every few seconds does not grow the agent without bound. The oldest
// finished execs are forgotten first.
const maxFinishedExecs = 128

// containerParams is what createContainer needs.
type containerParams struct {
	id           string
	root         string // libcontainer state root
	config       *configs.Config
	process      *specs.Process
	rootfsMounts []mountSpec
	stdin        bool
	reaper       *Reaper
}

// createContainer mounts the root file system, creates the libcontainer
// container and starts its init process, which then waits for Start. On
// failure it undoes everything it did.
func createContainer(ctx context.Context, p containerParams) (_ *Container, retErr error) {
	if err := mountAll(p.rootfsMounts); err != nil {
		return nil, fmt.Errorf("rootfs of container %s: %w", p.id, err)
	}
	var c *Container // once set, its destroy undoes everything
	defer func() {
		if retErr != nil && c == nil {
			_ = unmountAll(p.rootfsMounts)
		}
	}()
	if fi, err := os.Stat(p.config.Rootfs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("rootfs %s of container %s is not a directory: %w", p.config.Rootfs, p.id, errdefs.ErrInvalidArgument)
	}
	// The state that the guest's hooks (createContainer, startContainer)
	// get names the container's directory in the guest as its bundle, as
	// runc names the bundle: the directory that holds the rootfs.
	p.config.Labels = append(p.config.Labels, "bundle="+filepath.Dir(p.config.Rootfs))
	lc, err := libcontainer.Create(p.root, p.id, p.config)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("container %s: %w", p.id, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("create container %s: %w", p.id, err)
	}
	c = &Container{
		id:           p.id,
		lc:           lc,
		rootfsMounts: p.rootfsMounts,
		reaper:       p.reaper,
		execs:        map[string]*Process{},
	}
	defer func() {
		if retErr != nil {
			if c.init != nil {
				_ = c.init.lc.Signal(unix.SIGKILL)
				_, _ = c.init.Wait(ctx)
			}
			_ = c.destroy(ctx)
		}
	}()
	init, err := c.startProcess(ctx, p.process, "", p.stdin)
	if err != nil {
		return nil, err
	}
	c.init = init
	st, err := lc.State()
	if err != nil {
		return nil, fmt.Errorf("state of container %s: %w", p.id, err)
	}
	c.cgroupPaths = st.CgroupPaths
	if c.cgroup, err = cgmanager.NewWithPaths(p.config.Cgroups, st.CgroupPaths); err != nil {
		return nil, fmt.Errorf("cgroup of container %s: %w", p.id, err)
	}
	return c, nil
}

// processIO holds both ends of a new process's stdio until it started.
type processIO struct {
	stdinR, stdinW   *os.File
	stdoutR, stdoutW *os.File
	stderrR, stderrW *os.File
	consoleParent    *os.File // receives the pty master
	consoleChild     *os.File
}

func newProcessIO(terminal, stdin bool) (_ *processIO, retErr error) {
	io := &processIO{}
	defer func() {
		if retErr != nil {
			io.closeParent()
			io.closeChild()
		}
	}()
	var err error
	if terminal {
		io.consoleParent, io.consoleChild, err = utils.NewSockPair("console")
		return io, err
	}
	if stdin {
		if io.stdinR, io.stdinW, err = os.Pipe(); err != nil {
			return io, err
		}
	}
	if io.stdoutR, io.stdoutW, err = os.Pipe(); err != nil {
		return io, err
	}
	if io.stderrR, io.stderrW, err = os.Pipe(); err != nil {
		return io, err
	}
	// Larger pipes let a process write a burst without waiting for the
	// agent to be scheduled, which matters on a busy guest. Best effort:
	// the kernel may cap the size (fs.pipe-max-size).
	for _, f := range []*os.File{io.stdoutR, io.stderrR} {
		if raw, err := f.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
		}
	}
	return io, nil
}

// pipeSize is the capacity asked for output pipes.
const pipeSize = 1 << 20

func (io *processIO) attach(lp *libcontainer.Process) {
	if io.consoleChild != nil {
		lp.ConsoleSocket = io.consoleChild
		return
	}
	if io.stdinR != nil {
		lp.Stdin = io.stdinR
	}
	lp.Stdout = io.stdoutW
	lp.Stderr = io.stderrW
}

// closeChild closes the process's ends, which it inherited.
func (io *processIO) closeChild() {
	for _, f := range []*os.File{io.stdinR, io.stdoutW, io.stderrW, io.consoleChild} {
		if f != nil {
			_ = f.Close()
		}
	}
}

func (io *processIO) closeParent() {
	for _, f := range []*os.File{io.stdinW, io.stdoutR, io.stderrR, io.consoleParent} {
		if f != nil {
			_ = f.Close()
		}
	}
}

// recvConsole receives the pty master that runc init sent before it
// reported ready, and makes it non-blocking so that Close interrupts reads.
func (io *processIO) recvConsole() (*os.File, error) {
	defer io.consoleParent.Close()
	// Bound the wait in case the message never came.
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(int(io.consoleParent.Fd()), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	f, err := utils.RecvFile(io.consoleParent) //nolint:staticcheck // the documented way for libcontainer users
	if err != nil {
		return nil, fmt.Errorf("receive pty master: %w", err)
	}
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "pty-master"), nil
}

// startProcess starts the init process (execID "", which then waits for
// Start) or an exec process of c, with pipes or a terminal for stdio.
func (c *Container) startProcess(ctx context.Context, spec *specs.Process, execID string, stdin bool) (_ *Process, retErr error) {
	lp, err := newProcess(spec)
	if err != nil {
		return nil, err
	}
	isInit := execID == ""
	lp.Init = isInit
	lp.LogLevel = strconv.Itoa(int(logrus.GetLevel()))
	pio, err := newProcessIO(spec.Terminal, stdin)
	if err != nil {
		return nil, fmt.Errorf("stdio for container %s: %w", c.id, err)
	}
	pio.attach(lp)
	pid, err := c.reaper.Start(func() (int, error) {
		var err error
		if isInit {
			err = c.lc.Start(lp)
		} else {
			err = c.lc.Run(lp)
		}
		if err != nil {
			return 0, err
		}
		return lp.Pid()
	})
	pio.closeChild()
	if err != nil {
		pio.closeParent()
		what := "init process"
		if !isInit {
			what = "exec " + execID
		}
		return nil, fmt.Errorf("start %s of container %s: %w", what, c.id, err)
	}
	p := &Process{
		containerID: c.id,
		execID:      execID,
		lc:          lp,
		pid:         pid,
		pumpsDone:   make(chan struct{}),
		exited:      make(chan struct{}),
	}
	if isInit {
		p.state = &createdState{p: p}
	} else {
		p.state = &runningState{p: p}
	}
	bg := context.WithoutCancel(ctx)
	if spec.Terminal {
		master, err := pio.recvConsole()
		if err != nil {
			_ = lp.Signal(unix.SIGKILL)
			p.waitExit(bg, c.reaper)
			return nil, fmt.Errorf("terminal of container %s: %w", c.id, err)
		}
		p.console = master
		if stdin {
			p.stdin = newInputStream("stdin of "+p.name(), master, false)
		}
		p.stdout = newOutputStream("output of "+p.name(), master, false)
	} else {
		if pio.stdinW != nil {
			p.stdin = newInputStream("stdin of "+p.name(), pio.stdinW, true)
		}
		p.stdout = newOutputStream("stdout of "+p.name(), pio.stdoutR, true)
		p.stderr = newOutputStream("stderr of "+p.name(), pio.stderrR, true)
	}
	p.startPumps(bg)
	go p.waitExit(bg, c.reaper)
	return p, nil
}

// startPumps moves the process's output to the shim's stream
// connections once they are attached. A terminal has only one output
// stream, stdout.
func (p *Process) startPumps(ctx context.Context) {
	go p.stdout.run(ctx)
	if p.stderr != nil {
		go p.stderr.run(ctx)
	}
	go func() {
		<-p.stdout.done
		if p.stderr != nil {
			<-p.stderr.done
		}
		close(p.pumpsDone)
	}()
}

// Exec starts an exec process; execID must be new in c.
func (c *Container) Exec(ctx context.Context, execID string, spec *specs.Process, stdin bool) (*Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[execID]; ok {
		return nil, fmt.Errorf("exec %s of container %s: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	if c.init.Exited() || c.removing {
		return nil, fmt.Errorf("exec %s in container %s: the container has exited: %w", execID, c.id, errdefs.ErrFailedPrecondition)
	}
	// A process joining a frozen cgroup would freeze before it reports
	// to libcontainer, which would then wait forever.
	if err := c.checkNotPaused("exec " + execID + " in"); err != nil {
		return nil, err
	}
	p, err := c.startProcess(ctx, spec, execID, stdin)
	if err != nil {
		return nil, err
	}
	c.execs[execID] = p
	c.execOrder = append(c.execOrder, execID)
	c.forgetFinishedExecs()
	return p, nil
}

// forgetFinishedExecs drops the oldest finished execs beyond
// maxFinishedExecs; c.mu must be held.
func (c *Container) forgetFinishedExecs() {
	finished := 0
	for _, id := range c.execOrder {
		if c.execs[id].finished() {
			finished++
		}
	}
	kept := c.execOrder[:0]
	for _, id := range c.execOrder {
		if finished > maxFinishedExecs && c.execs[id].finished() {
			delete(c.execs, id)
			finished--
			continue
		}
		kept = append(kept, id)
	}
	c.execOrder = kept
}

// checkNotPaused fails when the container is frozen.
func (c *Container) checkNotPaused(op string) error {
	st, err := c.lc.Status()
	if err != nil {
		return fmt.Errorf("status of container %s: %w", c.id, err)
	}
	if st == libcontainer.Paused {
		return fmt.Errorf("%s container %s: it is paused: %w", op, c.id, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Process finds the init process (execID "") or an exec.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %s of container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// processes returns the init process and every exec.
func (c *Container) processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := []*Process{c.init}
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	return ps
}

// SignalAll sends sig to every process in the container's cgroup, freezing
// it meanwhile so that no new process escapes (as runc kill --all does).
func (c *Container) SignalAll(sig unix.Signal) error {
	if c.init.Exited() {
		return fmt.Errorf("cannot signal container %s: its init process has exited: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	return c.signalCgroup(sig)
}

func (c *Container) signalCgroup(sig unix.Signal) error {
	if !c.cgroup.Exists() {
		return nil
	}
	// For cgroup v1, a frozen process cannot die: thaw afterwards, always.
	_ = c.cgroup.Freeze(cgroups.Frozen)
	defer func() { _ = c.cgroup.Freeze(cgroups.Thawed) }()
	pids, err := c.cgroup.GetAllPids()
	if err != nil {
		return fmt.Errorf("list processes of container %s: %w", c.id, err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal pid %d of container %s: %w", pid, c.id, err)
		}
	}
	return nil
}

// Remove kills every process of the container, waits for them (bounded by
// ctx), and removes its state, cgroups and rootfs mounts.
func (c *Container) Remove(ctx context.Context) error {
	c.mu.Lock()
	c.removing = true
	c.mu.Unlock()
	for _, p := range c.processes() {
		if !p.Exited() {
			if err := c.signalCgroup(unix.SIGKILL); err != nil {
				return err
			}
			break
		}
	}
	for _, p := range c.processes() {
		if _, err := p.Wait(ctx); err != nil {
			return fmt.Errorf("remove container %s: %w", c.id, err)
		}
	}
	// An exec outside the container's pid namespace may leave orphans in
	// the cgroup; they must go before the cgroup can.
	if err := c.signalCgroup(unix.SIGKILL); err != nil {
		return err
	}
	return c.destroy(ctx)
}

// destroy releases everything of a container whose processes are gone.
func (c *Container) destroy(ctx context.Context) error {
	var errs []error
	for _, p := range c.processes() {
		if p == nil {
			continue
		}
		p.closeIO()
		// The pumps end once the killed processes' pipe ends are closed.
		select {
		case <-p.pumpsDone:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("output of %s still open: %w", p.name(), ctx.Err()))
		}
	}
	if err := c.reaper.Hold(c.lc.Destroy); err != nil {
		errs = append(errs, fmt.Errorf("destroy container %s: %w", c.id, err))
	}
	// libcontainer removes the cgroups; make sure, since a leftover cgroup
	// of a removed container is invisible to everyone else.
	for ctrl, path := range c.cgroupPaths {
		if err := removeCgroupDir(ctx, path); err != nil {
			errs = append(errs, fmt.Errorf("cgroup %s of container %s: %w", ctrl, c.id, err))
		}
	}
	if err := unmountAll(c.rootfsMounts); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeCgroupDir removes a cgroup directory, retrying while the kernel
// still counts dying processes in it.
func removeCgroupDir(ctx context.Context, path string) error {
	for {
		err := unix.Rmdir(path)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rmdir %s: %w", path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// watchOOM sends the container's id to events on every OOM kill in its
// cgroup, until the cgroup is removed.
func (c *Container) watchOOM(ctx context.Context, events chan<- string) {
	ch, err := c.lc.NotifyOOM()
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("no OOM notifications")
		return
	}
	go func() {
		for range ch {
			select {
			case events <- c.id:
			default:
				log.G(ctx).WithField("id", c.id).Warn("OOM event queue full, event dropped")
			}
		}
	}()
}
