package rootfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/mountns"
	"github.com/vmpod/vmpod/internal/require"
	"golang.org/x/sys/unix"
)

func TestValidID(t *testing.T) {
	for _, id := range []string{"", ".", "..", "a/b", "x\x00", string(make([]byte, 256))} {
		if ValidID(id) == nil {
			t.Errorf("ValidID(%q) accepted", id)
		}
	}
	for _, id := range []string{"demo", "a.b-c_d", "0123456789abcdef"} {
		if err := ValidID(id); err != nil {
			t.Errorf("ValidID(%q): %v", id, err)
		}
	}
}

func TestIsBind(t *testing.T) {
	for _, tc := range []struct {
		m    specs.Mount
		want bool
	}{
		{specs.Mount{Type: "bind", Source: "/a"}, true},
		{specs.Mount{Type: "none", Options: []string{"rbind", "ro"}}, true},
		{specs.Mount{Options: []string{"bind"}}, true},
		{specs.Mount{Type: "proc", Source: "proc"}, false},
		{specs.Mount{Type: "tmpfs", Options: []string{"nosuid"}}, false},
		{specs.Mount{Type: "cgroup", Options: []string{"ro"}}, false},
	} {
		if got := isBind(tc.m); got != tc.want {
			t.Errorf("isBind(%+v) = %v, want %v", tc.m, got, tc.want)
		}
	}
}

// TestBindMountsRewriteSpec bind-mounts a directory (rw) and a file (ro)
// into the shared directory, checks the spec now names guest paths with
// the options kept and other mounts untouched, and that Remove undoes it.
func TestBindMountsRewriteSpec(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to bind-mount")
	}
	root := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{root}})
	srcDir := filepath.Join(root, "src")
	srcFile := filepath.Join(root, "hosts")
	if err := os.Mkdir(srcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(srcFile, []byte("127.0.0.1 x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := NewLayout(filepath.Join(root, "shared"), "/run/vmpod/shared", "c1")
	if err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/data", Type: "bind", Source: srcDir, Options: []string{"rbind", "rw"}},
		{Destination: "/etc/hosts", Type: "bind", Source: srcFile, Options: []string{"rbind", "ro"}},
	}}
	ctx := context.Background()
	if err := l.BindMounts(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if spec.Mounts[0].Source != "proc" {
		t.Errorf("proc mount rewritten to %q", spec.Mounts[0].Source)
	}
	if got, want := spec.Mounts[1].Source, "/run/vmpod/shared/c1/mounts/1"; got != want {
		t.Errorf("directory bind source %q, want %q", got, want)
	}
	if got, want := spec.Mounts[2].Source, "/run/vmpod/shared/c1/mounts/2"; got != want {
		t.Errorf("file bind source %q, want %q", got, want)
	}
	if o := spec.Mounts[2].Options; len(o) != 2 || o[1] != "ro" {
		t.Errorf("options not kept: %v", o)
	}
	// The host side shows the sources; the ro one refuses writes.
	if err := os.WriteFile(filepath.Join(root, "shared/c1/mounts/1/f"), []byte("x"), 0o644); err != nil {
		t.Errorf("write through rw bind: %v", err)
	}
	if _, err := os.Stat(filepath.Join(srcDir, "f")); err != nil {
		t.Errorf("write did not reach the source: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "shared/c1/mounts/2"), []byte("y"), 0o644); err == nil {
		t.Error("write through a read-only bind succeeded")
	}
	if err := Remove(ctx, l.NS, l.HostDir); err != nil {
		t.Fatal(err)
	}
	if ms, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(root)); len(ms) != 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if _, err := os.Stat(l.HostDir); !os.IsNotExist(err) {
		t.Errorf("%s not removed: %v", l.HostDir, err)
	}
	if data, err := os.ReadFile(srcFile); err != nil || string(data) != "127.0.0.1 x\n" {
		t.Errorf("source file changed: %q %v", data, err)
	}
}

func TestBindMountRejectsRelativeSource(t *testing.T) {
	l, _ := NewLayout(t.TempDir(), "/g", "c")
	spec := &specs.Spec{Mounts: []specs.Mount{{Destination: "/x", Type: "bind", Source: "rel/dir"}}}
	if err := l.BindMounts(context.Background(), spec); err == nil {
		t.Fatal("relative bind source accepted")
	}
}

// TestReadOnlyBindKeepsSubmounts: a read-only recursive bind of a
// directory with a writable tmpfs and a read-only tmpfs below it gets,
// after it in the spec, a bind of each submount with that submount's own
// flag (runc's "ro" is not recursive; see submountBinds).
func TestReadOnlyBindKeepsSubmounts(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to mount")
	}
	root := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{root}})
	src := filepath.Join(root, "src")
	for _, d := range []string{"src/rw", "src/ro"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []struct {
		dir   string
		flags uintptr
	}{{"src/rw", 0}, {"src/ro", unix.MS_RDONLY}} {
		if err := unix.Mount("tmpfs", filepath.Join(root, m.dir), "tmpfs", m.flags, "size=1m"); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(filepath.Join(root, m.dir), unix.MNT_DETACH)
	}
	l, err := NewLayout(filepath.Join(root, "shared"), "/run/vmpod/shared", "c1")
	if err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/mnt", Type: "bind", Source: src, Options: []string{"rbind", "ro"}},
		{Destination: "/rw", Type: "bind", Source: src, Options: []string{"rbind", "rw"}},
	}}
	ctx := context.Background()
	if err := l.BindMounts(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer Remove(ctx, l.NS, l.HostDir)
	want := []specs.Mount{
		{Destination: "/mnt", Type: "bind", Source: "/run/vmpod/shared/c1/mounts/0", Options: []string{"rbind", "ro"}},
		{Destination: "/mnt/ro", Type: "bind", Source: "/run/vmpod/shared/c1/mounts/0/ro", Options: []string{"rbind", "ro"}},
		{Destination: "/mnt/rw", Type: "bind", Source: "/run/vmpod/shared/c1/mounts/0/rw", Options: []string{"rbind", "rw"}},
		// A writable bind needs nothing more: its submounts are reached
		// through a writable mount.
		{Destination: "/rw", Type: "bind", Source: "/run/vmpod/shared/c1/mounts/1", Options: []string{"rbind", "rw"}},
	}
	if !reflect.DeepEqual(spec.Mounts, want) {
		t.Errorf("mounts:\n%+v\nwant\n%+v", spec.Mounts, want)
	}
	// On the host the submount stays writable below the read-only bind.
	if err := os.WriteFile(filepath.Join(l.HostDir, "mounts/0/rw/f"), []byte("x"), 0o644); err != nil {
		t.Errorf("write to the writable submount through the read-only bind: %v", err)
	}
	if err := Remove(ctx, l.NS, l.HostDir); err != nil {
		t.Fatal(err)
	}
}

// TestRecursiveReadOnlyBind: an "rro" bind (containerd 2.x's recursive
// read-only mounts) is read-only on the host side of the share down to its
// writable submount, gets no per-submount binds, and keeps "rro" for the
// guest's libcontainer.
func TestRecursiveReadOnlyBind(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to mount")
	}
	root := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{root}})
	src := filepath.Join(root, "src")
	if err := os.MkdirAll(filepath.Join(src, "rw"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(src, "rw"), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(src, "rw"), unix.MNT_DETACH)
	l, err := NewLayout(filepath.Join(root, "shared"), "/run/vmpod/shared", "c1")
	if err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/mnt", Type: "bind", Source: src, Options: []string{"rbind", "rprivate", "rro"}},
	}}
	ctx := context.Background()
	if err := l.BindMounts(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer Remove(ctx, l.NS, l.HostDir)
	want := []specs.Mount{
		{Destination: "/mnt", Type: "bind", Source: "/run/vmpod/shared/c1/mounts/0", Options: []string{"rbind", "rprivate", "rro"}},
	}
	if !reflect.DeepEqual(spec.Mounts, want) {
		t.Errorf("mounts:\n%+v\nwant\n%+v", spec.Mounts, want)
	}
	for _, f := range []string{"mounts/0/f", "mounts/0/rw/f"} {
		if err := os.WriteFile(filepath.Join(l.HostDir, f), []byte("x"), 0o644); err == nil {
			t.Errorf("write to %s through the recursively read-only bind succeeded", f)
		}
	}
	// The source's own submount stays writable.
	if err := os.WriteFile(filepath.Join(src, "rw/f"), []byte("x"), 0o644); err != nil {
		t.Errorf("write to the source's submount: %v", err)
	}
	if err := Remove(ctx, l.NS, l.HostDir); err != nil {
		t.Fatal(err)
	}
}

// TestMountsInNamespace: with a mount namespace, the binds stay out of
// the caller's mount table, and Remove works before and after the
// namespace is closed (a stopped sandbox took its mounts with it).
func TestMountsInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to bind-mount")
	}
	root := t.TempDir()
	src := filepath.Join(root, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	ns, err := mountns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx := context.Background()
	for i, closeFirst := range []bool{false, true} {
		l, err := NewLayout(filepath.Join(root, "shared"), "/run/vmpod/shared", fmt.Sprintf("c%d", i))
		if err != nil {
			t.Fatal(err)
		}
		l.NS = ns
		spec := &specs.Spec{Mounts: []specs.Mount{{Destination: "/data", Type: "bind", Source: src, Options: []string{"rbind"}}}}
		if err := l.BindMounts(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if ms, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(root)); len(ms) != 0 {
			t.Errorf("the namespace's binds show in the caller's mount table: %v", ms)
		}
		if closeFirst {
			ns.Close()
		}
		if err := Remove(ctx, l.NS, l.HostDir); err != nil {
			t.Fatalf("Remove (namespace closed: %v): %v", closeFirst, err)
		}
		if _, err := os.Stat(l.HostDir); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", l.HostDir, err)
		}
	}
}
