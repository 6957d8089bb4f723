package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// teardown removes everything the daemon and its shims made. Leftovers that
// the test itself should have removed (processes) are reported as errors,
// then killed, so that one failing test does not poison the next.
func (c *Containerd) teardown(t testing.TB) {
	t.Helper()
	if c.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), purgeTimeout)
		if err := c.purge(ctx); err != nil {
			t.Logf("teardown: %v", err)
		}
		cancel()
		if err := c.stop(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	for _, p := range c.processes() {
		t.Errorf("teardown: leftover process %s; killing it", p)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	if err := unmountUnder(c.Dir); err != nil {
		t.Errorf("teardown: %v", err)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Errorf("teardown: %v", err)
	}
}

// purge kills and deletes every task and container in every namespace,
// as a test that failed half-way may have left them.
func (c *Containerd) purge(ctx context.Context) error {
	out, _, err := c.Ctr(ctx, "namespaces", "list", "-q")
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range strings.Fields(out) {
		ctr := func(args ...string) (string, error) {
			o, _, err := c.CtrIn(ctx, ns, nil, args...)
			return o, err
		}
		tasks, err := ctr("tasks", "list", "-q")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, id := range strings.Fields(tasks) {
			_, _ = ctr("tasks", "kill", "--all", "--signal", "SIGKILL", id)
			if _, err := ctr("tasks", "delete", "--force", id); err != nil {
				errs = append(errs, err)
			}
		}
		ctrs, err := ctr("containers", "list", "-q")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, id := range strings.Fields(ctrs) {
			if _, err := ctr("containers", "delete", id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// stop ends the daemon: SIGTERM, then SIGKILL after stopTimeout.
func (c *Containerd) stop() error {
	select {
	case <-c.done:
		return fmt.Errorf("containerd had already exited: %v", c.err)
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
		return fmt.Errorf("containerd ignored SIGTERM for %s; killed", stopTimeout)
	case <-time.After(stopTimeout):
		return fmt.Errorf("containerd (pid %d) survived SIGKILL for %s", c.cmd.Process.Pid, stopTimeout)
	}
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("reading mounts under %s: %w", dir, err)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m.Mountpoint, err))
		}
	}
	return errors.Join(errs...)
}
