package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/network"
	"golang.org/x/sys/unix"
)

// TestManagerStopCleansUpAfterCrash plays a dead shim's leftovers — a
// process naming the sandbox directory (as QEMU and virtiofsd do) and a
// mount under it — and checks the delete action removes them all.
func TestManagerStopCleansUpAfterCrash(t *testing.T) {
	needRoot(t)
	root, err := os.MkdirTemp("", "vmpod-mgr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	leakcheck.Check(t, leakcheck.Options{Roots: []string{root}})
	old := StateRoot
	StateRoot = filepath.Join(root, "sandboxes")
	t.Cleanup(func() { StateRoot = old })

	dir := filepath.Join(StateRoot, "c1")
	target := filepath.Join(dir, SharedDirName, "c1", "rootfs")
	src := filepath.Join(root, "src")
	for _, d := range []string{target, src} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	// A stand-in for QEMU: its command line names a socket in the sandbox.
	// It waits in the shell's own read, on a pipe nobody writes to: a
	// child (sleep) would outlive the shell when the delete action kills
	// it, holding whatever the test process had open.
	stdin, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdinW.Close()
	leftover := exec.Command("sh", "-c", "read line", "vmpod-qemu", filepath.Join(dir, "vm", "qmp.sock"))
	leftover.Stdin = stdin
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	exited := make(chan struct{})
	go func() { leftover.Wait(); close(exited) }()

	bundle := filepath.Join(root, "bundle")
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	// The dead shim's network namespace for the container, and a poststop
	// hook that records where it ran and what it got.
	netns := filepath.Join(dir, NetnsName)
	if err := network.NewNamespace(netns); err != nil {
		t.Fatal(err)
	}
	var nsStat unix.Stat_t
	if err := unix.Stat(netns, &nsStat); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(root, "poststop")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho ran >> $0.count; tee $0.json | sed -n \"s/.*\\\"pid\\\":\\([0-9]*\\).*/\\1/p\" > $0.pid; readlink /proc/$(cat $0.pid)/ns/net > $0.netns\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`{"ociVersion":"1.1.0","annotations":{"a":"b"},"hooks":{"poststop":[{"path":%q}]}}`, hook)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(bundle)

	st, err := NewManager("io.containerd.kata.v2").Stop(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitStatus != 137 || st.ExitedAt.IsZero() {
		t.Errorf("stop status %+v, want 137 with a time", st)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		leftover.Process.Kill()
		t.Error("leftover sandbox process not killed")
	}
	if ms, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(dir)); len(ms) != 0 {
		t.Errorf("mounts left under %s: %d", dir, len(ms))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("sandbox directory %s not removed: %v", dir, err)
	}
	var state specs.State
	if data, err := os.ReadFile(hook + ".json"); err != nil || json.Unmarshal(data, &state) != nil {
		t.Errorf("poststop hook did not run: %v", err)
	} else if state.ID != "c1" || state.Status != specs.StateStopped || state.Bundle != bundle || state.Annotations["a"] != "b" {
		t.Errorf("poststop hook got %+v", state)
	}
	if data, _ := os.ReadFile(hook + ".netns"); strings.TrimSpace(string(data)) != fmt.Sprintf("net:[%d]", nsStat.Ino) {
		t.Errorf("poststop hook's /proc/<state.pid>/ns/net is %q, not the container's network namespace", data)
	}
	// A second delete (containerd's, after a shim that shut down cleanly)
	// finds nothing left and runs no hook.
	if _, err := NewManager("io.containerd.kata.v2").Stop(context.Background(), "c1"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(hook + ".count"); string(data) != "ran\n" {
		t.Errorf("poststop hook ran %d times, want once", strings.Count(string(data), "ran"))
	}
}

// TestBundleSandbox reads the CRI annotations that put a container in a pod.
func TestBundleSandbox(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write := func(s string) {
		if err := os.WriteFile("config.json", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"}}`)
	if sb, joins := bundleSandbox("c1", bundleSpec()); sb != "pod1" || !joins {
		t.Errorf("CRI container: %q %v", sb, joins)
	}
	write(`{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1"}}`)
	if sb, joins := bundleSandbox("pod1", bundleSpec()); sb != "pod1" || joins {
		t.Errorf("CRI sandbox: %q %v", sb, joins)
	}
	write(`{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"../x"}}`)
	if sb, joins := bundleSandbox("c1", bundleSpec()); sb != "c1" || joins {
		t.Errorf("bad sandbox id accepted: %q %v", sb, joins)
	}
	write(`not json`)
	if sb, joins := bundleSandbox("c1", bundleSpec()); sb != "c1" || joins {
		t.Errorf("garbage spec: %q %v", sb, joins)
	}
}
