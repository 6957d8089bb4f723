package hostcgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/require"
)

func TestResolve(t *testing.T) {
	for in, want := range map[string]string{
		"/default/c1":      "/default/c1",
		"kubepods/pod1/c1": "kubepods/pod1/c1",
		"kubepods-besteffort-pod12.slice:cri-containerd:abc": "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope",
		":vmpod:c1":               "/system.slice/vmpod-c1.scope",
		"user.slice::c1":          "/user.slice/c1.scope",
		"-.slice:x:y":             "/x-y.scope",
		"a.slice:ignored:b.slice": "/a.slice/b.slice",
	} {
		got, err := resolve(in)
		if err != nil || got != want {
			t.Errorf("resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a:b", "a-.slice:p:n", "noslice:p:n", "a.slice:p:", "a.slice:p:x/y", "a:b:c:d"} {
		if got, err := resolve(bad); err == nil {
			t.Errorf("resolve(%q) = %q, want an error", bad, got)
		}
	}
}

func FuzzResolve(f *testing.F) {
	for _, s := range []string{"/a/b", "a.slice:p:n", "a-b.slice:p:n", "-.slice::x", "../..", ":::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := resolve(in)
		if err == nil && out == "" {
			t.Fatalf("resolve(%q) gave an empty path and no error", in)
		}
	})
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to create cgroups")
	}
	if _, err := hierarchies(); err != nil {
		require.Missingf(t, "no cgroup file system: %v", err)
	}
}

// testParent returns a fresh top-level cgroup path and removes it, in
// every hierarchy, at the end.
func testParent(t *testing.T) string {
	t.Helper()
	parent := fmt.Sprintf("/vmpod-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	t.Cleanup(func() {
		g, err := Open(parent)
		if err != nil {
			return
		}
		for _, d := range g.Dirs() {
			_ = os.Remove(d)
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left behind", d)
			}
		}
	})
	return parent
}

func TestCreateAddDelete(t *testing.T) {
	needRoot(t)
	path := testParent(t) + "/pod/sandbox1"
	g, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Dirs()) == 0 {
		t.Fatal("no cgroup directories")
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err != nil {
			t.Errorf("cgroup %s not created: %v", d, err)
		}
	}
	// A parent that forked before the move: both must end up inside.
	cmd := exec.Command("sh", "-c", "sleep 60 & echo $!; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	child, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("child pid: %q", buf[:n])
	}
	defer func() { _ = syscallKill(child) }()
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{cmd.Process.Pid, child} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), path) {
			t.Errorf("process %d is not in %s:\n%s", pid, path, data)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err = g.Delete(ctx)
	cancel()
	if err == nil {
		t.Fatal("Delete of a cgroup with processes succeeded")
	}
	_ = syscallKill(child)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s still exists after Delete: %v", d, err)
		}
	}
	if err := g.Delete(ctx); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	// The parent ("pod") stays: it may be shared.
	p, _ := Open(filepath.Dir(path))
	if _, err := os.Stat(p.Dirs()[0]); err != nil {
		t.Errorf("Delete removed the parent: %v", err)
	}
	for _, d := range p.Dirs() {
		_ = os.Remove(d)
	}
}

func TestOpenStaysInHierarchy(t *testing.T) {
	needRoot(t)
	for _, path := range []string{"/../../etc", "../../../../etc", "a/../../.."} {
		g, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range g.Dirs() {
			if !strings.HasPrefix(d+"/", g.hs[i].mount+"/") {
				t.Errorf("Open(%q) resolved to %s, outside %s", path, d, g.hs[i].mount)
			}
		}
	}
}

func TestRelativeToOwnCgroup(t *testing.T) {
	needRoot(t)
	g, err := Open("child")
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range g.hs {
		own, err := ownCgroup(h)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(h.mount, own, "child"); g.Dirs()[i] != want {
			t.Errorf("relative path in %s: %s, want %s", h.mount, g.Dirs()[i], want)
		}
	}
}

func syscallKill(pid int) error { return unix.Kill(pid, unix.SIGKILL) }

// TestJoinLeave moves this test process into a group and back: while in,
// the group holds it (and cannot be removed); after leave, it is back in
// the cgroups it came from and the group goes.
func TestJoinLeave(t *testing.T) {
	needRoot(t)
	before, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	path := testParent(t) + "/shim"
	g, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	leave, err := g.Join()
	if err != nil {
		t.Fatal(err)
	}
	left := false
	t.Cleanup(func() {
		if !left {
			leave()
		}
		g.Delete(context.Background())
	})
	for _, d := range g.Dirs() {
		data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(strings.Fields(string(data)), strconv.Itoa(os.Getpid())) {
			t.Errorf("cgroup %s holds %q, not this process", d, data)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := g.Delete(ctx); err == nil {
		t.Error("deleted a group this process is in")
	}
	if err := leave(); err != nil {
		t.Fatal(err)
	}
	left = true
	after, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Errorf("after leave, /proc/self/cgroup is\n%s\nwant\n%s", after, before)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestJoin moves a process into an existing cgroup, in the hierarchies
// that have it, as runc's shim does with ShimCgroup.
func TestJoin(t *testing.T) {
	needRoot(t)
	parent := testParent(t)
	if err := Join(parent+"/missing", os.Getpid()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Join of a cgroup that does not exist: %v, want ErrNotExist", err)
	}
	path := parent + "/shim"
	g, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Only some hierarchies have it: Join uses those, as runc's shim.
	dirs := g.Dirs()
	if len(dirs) > 1 {
		if err := os.Remove(dirs[0]); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := Join(path, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	for i, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if i == 0 && len(dirs) > 1 {
			if err == nil {
				t.Errorf("Join created %s", d)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains("\n"+string(data), "\n"+strconv.Itoa(cmd.Process.Pid)+"\n") {
			t.Errorf("process %d is not in %s: %q", cmd.Process.Pid, d, data)
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}
