package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/integration/harness"
)

// TestCRIHandlerFeatures: containerd 2.x learns each handler's features by
// running its shim with -info, and CRI reports them (crictl info's
// runtimeHandlers). The kata handler has recursive read-only mounts, as
// runc's has; it has no user namespaces in CRI's sense, which needs
// idmapped mounts as well, and those do not work over the guest's
// virtio-fs. A recursively read-only hostPath mount is then read-only in
// the pod's VM down to the submount below it.
func TestCRIHandlerFeatures(t *testing.T) {
	harness.RequireVMs(t)
	d, err := harness.SelectedDaemon()
	if err != nil {
		t.Fatalf("containerd: %v", err)
	}
	if d.Major < 2 {
		t.Skipf("%s: CRI reports runtime handler features from containerd 2.0 on (VMPOD_CONTAINERD=2)", d)
	}
	e := newCRIEnv(t)

	info := e.decode(e.must("info"))
	handlers, _ := info["runtimeHandlers"].([]any)
	feats := map[string]map[string]any{}
	for _, h := range handlers {
		name, _ := field(h, "name").(string)
		f, _ := field(h, "features").(map[string]any)
		feats[name] = f
	}
	for _, name := range []string{"kata", "runc"} {
		if _, ok := feats[name]; !ok {
			t.Fatalf("%s: crictl info lists no features for handler %s: runtimeHandlers %v", d, name, handlers)
		}
	}
	// crictl drops false fields (omitempty): absent is false.
	if feats["kata"]["recursive_read_only_mounts"] != true {
		t.Errorf("%s: handler kata has no recursive read-only mounts: %v (runc: %v)", d, feats["kata"], feats["runc"])
	}
	if feats["runc"]["recursive_read_only_mounts"] != true {
		t.Errorf("%s: handler runc has no recursive read-only mounts (the host kernel's?): %v", d, feats["runc"])
	}
	if feats["kata"]["user_namespaces"] == true {
		t.Errorf("%s: handler kata reports user namespaces, which need idmapped mounts the guest does not have: %v", d, feats["kata"])
	}

	// A host directory with a writable tmpfs below it, mounted into the
	// container recursively read-only.
	src := filepath.Join(t.TempDir(), "src")
	sub := filepath.Join(src, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })

	pod, podPath := e.runPod(e.podConfig("pod-rro", false))
	script := `for f in /rro/f /rro/sub/f; do if touch $f 2>/dev/null; then echo "$f writable"; else echo "$f read-only"; fi; done`
	cfg := containerConfig("rro", 0, []string{"sh", "-c", script}, nil)
	cfg["mounts"] = []map[string]any{{
		"container_path":      "/rro",
		"host_path":           src,
		"readonly":            true,
		"recursive_read_only": true,
		"propagation":         0, // PROPAGATION_PRIVATE, which rro needs
	}}
	c := e.startContainer(pod, podPath, cfg)
	e.waitState(c, "CONTAINER_EXITED", 2*time.Minute)
	waitLog(t, e, c, "/rro/f read-only")
	waitLog(t, e, c, "/rro/sub/f read-only")
	for _, f := range []string{filepath.Join(src, "f"), filepath.Join(sub, "f")} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("the container wrote %s through its recursively read-only mount", f)
		}
	}
	e.must("stopp", pod)
	e.must("rmp", pod)
	e.assertNoPods()
}
