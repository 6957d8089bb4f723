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
	// As critest lays it out: the pod starts first; then the volume is
	// made a shared mount of its own, on a host whose / may well be
	// private (so the sandbox's mount namespace, copied at pod start, has
	// no copy of it); a mount made on it later must reach the container.
	podCfg := e.podConfig("prop", false)
	podCfg["linux"].(map[string]any)["security_context"].(map[string]any)["privileged"] = true
	pod, podPath := e.runPod(podCfg)
	root := t.TempDir()
	vol := filepath.Join(root, "vol")
	if err := os.MkdirAll(filepath.Join(vol, "late"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The kubelet requires a shared host mount for these propagations;
	// containerd checks it.
	if err := unix.Mount(vol, vol, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(vol, unix.MNT_DETACH) })
	if err := unix.Mount("", vol, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("c", 0, []string{"sleep", "100000"}, map[string]any{
		"security_context": map[string]any{"privileged": true},
	})
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
	lateSrc := filepath.Join(root, "late-src")
	if err := os.Mkdir(lateSrc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(lateSrc, late, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(late, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(late, "marker"), []byte("mounted after the pod\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// As critest looks, at once: a listing of the new mount point, and
	// the file in it.
	for _, dir := range []string{"/slave", "/shared"} {
		if out, err := e.run("", "exec", "-s", c, "ls", "-A", dir+"/late"); err != nil || trim(out) != "marker" {
			t.Errorf("ls -A %s/late in the container: %q, %v; want the host's later mount, holding marker", dir, out, err)
		}
		if out, err := e.run("", "exec", "-s", c, "cat", dir+"/late/marker"); err != nil || trim(out) != "mounted after the pod" {
			t.Errorf("cat %s/late/marker in the container: %q, %v", dir, out, err)
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
