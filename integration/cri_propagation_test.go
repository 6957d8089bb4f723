package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCRIMountPropagation: a host mount made under a volume after the pod
// started reaches the container through virtio-fs, for both volumes that
// ask for it (rslave: HostToContainer, rshared: Bidirectional; the
// container-to-host half of rshared cannot cross the VM). The shim's own
// mounts are in its sandbox's mount namespace: none shows in the host's
// while the pod runs, and the host removes its own mount point freely.
func TestCRIMountPropagation(t *testing.T) {
	e := newCRIEnv(t)
	vol := filepath.Join(t.TempDir(), "vol")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	// The kubelet requires a shared host mount for these propagations;
	// containerd checks it.
	if err := unix.Mount(vol, vol, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(vol, unix.MNT_DETACH) })
	if err := unix.Mount("", vol, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	pod, podPath := e.runPod(e.podConfig("prop", false))
	cfg := containerConfig("c", 0, []string{"sleep", "100000"}, nil)
	cfg["mounts"] = []map[string]any{
		{"container_path": "/slave", "host_path": vol, "propagation": 1},  // PROPAGATION_HOST_TO_CONTAINER
		{"container_path": "/shared", "host_path": vol, "propagation": 2}, // PROPAGATION_BIDIRECTIONAL
	}
	c := e.startContainer(pod, podPath, cfg)
	e.waitState(c, "CONTAINER_RUNNING", time.Minute)

	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], e.stateRoot+"/") {
			t.Errorf("a sandbox mount in the host's mount namespace: %s", l)
		}
	}

	late := filepath.Join(vol, "late")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", late, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(late, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(late, "marker"), []byte("mounted after the pod\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"/slave", "/shared"} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := e.run("", "exec", "-s", c, "cat", dir+"/late/marker")
			if err == nil && trim(out) == "mounted after the pod" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: the host's later mount is not in the container: %q, %v", dir, out, err)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// The host takes its mount point back while the pod runs, as the
	// kubelet and critest do (lazily: virtiofsd holds the inodes the
	// guest looked up, as a process in a runc container holding a file
	// there would, so a plain umount can be EBUSY while that lasts).
	if err := unix.Unmount(late, unix.MNT_DETACH); err != nil {
		t.Fatalf("host umount of its own mount point: %v", err)
	}
	if err := os.Remove(late); err != nil {
		t.Fatalf("host rmdir of its own mount point: %v", err)
	}
}
