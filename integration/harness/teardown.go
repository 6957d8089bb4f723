package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// configTOML is containerd's configuration: everything under c.Dir, only
// the plugins a test needs.
func (c *Containerd) configTOML() string {
	disabled := []string{
		"io.containerd.internal.v1.opt",
		"io.containerd.snapshotter.v1.aufs",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.tracing.processor.v1.otlp",
		"io.containerd.internal.v1.tracing",
	}
	if !c.opts.CRI {
		disabled = append(disabled, "io.containerd.grpc.v1.cri")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\n", c.Root, c.State)
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n\n", quoteList(disabled))
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n\n", c.Address)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n\n", c.Address+".ttrpc")
	fmt.Fprintf(&b, "[debug]\n  level = \"debug\"\n\n")
	if c.opts.CRI {
		b.WriteString(c.criTOML())
	}
	b.WriteString(c.opts.ExtraConfig)
	return b.String()
}

// CNIConfDir is the CRI plugin's CNI configuration directory (empty at
// start; CRI picks up files written there later).
func (c *Containerd) CNIConfDir() string { return filepath.Join(c.Dir, "cni") }

func (c *Containerd) criTOML() string {
	const p = `plugins."io.containerd.grpc.v1.cri"`
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]\n", p)
	// No CAP_SYS_RESOURCE for the sandbox's oom_score_adj here.
	b.WriteString("  restrict_oom_score_adj = true\n")
	b.WriteString("  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n")
	if c.opts.SandboxImage != "" {
		fmt.Fprintf(&b, "  sandbox_image = %q\n", c.opts.SandboxImage)
	}
	fmt.Fprintf(&b, "[%s.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = %q\n", p, c.CNIConfDir())
	fmt.Fprintf(&b, "[%s.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n", p)
	fmt.Fprintf(&b, "[%s.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n", p)
	fmt.Fprintf(&b, "[%s.containerd.runtimes.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n", p)
	if c.opts.KataConfigPath != "" {
		fmt.Fprintf(&b, "[%s.containerd.runtimes.kata.options]\n  ConfigPath = %q\n", p, c.opts.KataConfigPath)
	}
	b.WriteString("\n")
	return b.String()
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(q, ", ")
}

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
