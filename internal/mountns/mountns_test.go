package mountns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/require"
)

func hostMountinfo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNamespace: mounts made with Do stay out of the host's namespace but
// are seen by Do and by a child from Start; the host's later mounts
// propagate in; the host can remove a directory that is a mount point
// only inside (the EBUSY that motivated the namespace).
func TestNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root (mount namespaces)")
	}
	dir := t.TempDir()
	src, target, sub := filepath.Join(dir, "src"), filepath.Join(dir, "target"), filepath.Join(dir, "src", "sub")
	for _, d := range []string{src, target, sub} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The host side of a volume with shared propagation, as the kubelet
	// (or critest) makes it.
	if err := unix.Mount(src, src, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(src, unix.MNT_DETACH)
	if err := unix.Mount("", src, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}

	ns, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.Do(func() error { return unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, "") }); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(hostMountinfo(t), " "+target+" ") {
		t.Fatalf("the namespace's mount at %s shows in the host's namespace", target)
	}
	inside := func() string {
		var s string
		if err := ns.Do(func() error {
			b, err := os.ReadFile(MountinfoPath)
			s = string(b)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if !strings.Contains(inside(), " "+target+" ") {
		t.Fatalf("Do does not see its own mount at %s", target)
	}

	t.Run("Start", func(t *testing.T) {
		cmd := exec.Command("cat", "/proc/self/mountinfo")
		var out strings.Builder
		cmd.Stdout = &out
		waited, err := ns.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-waited:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("cat did not exit")
		}
		if !strings.Contains(out.String(), " "+target+" ") {
			t.Errorf("a child started in the namespace does not see %s", target)
		}
	})

	t.Run("HostMountPropagatesIn", func(t *testing.T) {
		if err := unix.Mount("tmpfs", sub, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "late"), []byte("late\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		var got []byte
		err := ns.Do(func() error {
			var err error
			got, err = os.ReadFile(filepath.Join(target, "sub", "late"))
			return err
		})
		if err != nil || string(got) != "late\n" {
			t.Fatalf("a host mount made later under the bound volume: %q, %v", got, err)
		}
		// The host unmounts and removes its mount point: no EBUSY, and
		// the namespace follows.
		if err := unix.Unmount(sub, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(sub); err != nil {
			t.Fatalf("host rmdir of its own mount point: %v", err)
		}
	})

	t.Run("HostRmdirOfInsideMountPoint", func(t *testing.T) {
		own := filepath.Join(dir, "own")
		if err := os.Mkdir(own, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := ns.Do(func() error { return unix.Mount("tmpfs", own, "tmpfs", 0, "") }); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(own); err != nil {
			t.Fatalf("host rmdir of a directory mounted on only inside the namespace: %v", err)
		}
	})

	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { return nil }); err != ErrClosed {
		t.Errorf("Do after Close: %v, want ErrClosed", err)
	}
}
