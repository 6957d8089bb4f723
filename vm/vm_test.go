package vm

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/jail"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/internal/testrootfs"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/stdiostream"
	"github.com/vmpod/vmpod/version"
)

func TestMain(m *testing.M) {
	code := testbin.RunVMs(m)
	imagetest.Cleanup()
	os.Exit(code)
}

// testJail is the production range and the host-wide lock directory, so
// that test VMs and any other vmpod VMs on the host get distinct uids.
var testJail = jail.Range{Start: jail.DefaultUIDStart, Count: jail.DefaultUIDCount}

// privateJail gives cfg a lock directory of the test's own, from a block
// above the production range (so that its uids cannot meet a VM's of the
// host-wide directory), and checks at the end that no lock file is left.
func privateJail(t *testing.T, cfg *Config) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "jail")
	cfg.Jail = &jail.Range{LockDir: dir, Start: jail.DefaultUIDStart + jail.DefaultUIDCount, Count: 16}
	t.Cleanup(func() {
		if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
			t.Errorf("jail lock directory %s: %v, holds %v; want it empty after the VM", dir, err, ents)
		}
	})
}

// testConfig is a jailed VM in a fresh directory, checked for leaks at the
// end.
func testConfig(t testing.TB, initrd string) (Config, string) {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir, initrd}})
	t.Cleanup(func() { leakcheck.NoDirs(t, state) })
	return Config{
		ID:       "test-" + filepath.Base(dir),
		StateDir: state,
		Hypervisor: hypervisor.Config{
			Path: imagetest.QEMUPath, Kernel: imagetest.Kernel(t), Initrd: initrd, Accel: hypervisor.AccelTCG,
		},
		VsockMode:   VsockVhostUser,
		DialTimeout: 90 * time.Second,
		Jail:        &testJail,
	}, dir
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestVM boots one guest with the real agent and a shared directory and
// runs the checks that can share it.
func TestVM(t *testing.T) {
	imagetest.Require(t)
	cfg, dir := testConfig(t, imagetest.AgentInitrd(t))
	cfg.SharedDir = filepath.Join(dir, "shared")
	// The kernel as `make image` writes it (TestMicrovm boots the bzImage).
	cfg.Hypervisor.Kernel = imagetest.Vmlinux(t)
	// A container rootfs present before the VM starts.
	if err := testrootfs.Busybox(filepath.Join(cfg.SharedDir, "c1", "rootfs")); err != nil {
		t.Fatal(err)
	}
	v, err := Start(ctxFor(t, 2*time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctxFor(t, 30*time.Second))

	t.Run("Check", func(t *testing.T) {
		resp, err := v.Agent().Check(ctxFor(t, 10*time.Second), &agentpb.CheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Version != version.Version {
			t.Errorf("agent version %q, want %q", resp.Version, version.Version)
		}
		if rel := imagetest.Release(t); resp.KernelRelease != rel {
			t.Errorf("guest kernel %q, want %q", resp.KernelRelease, rel)
		}
	})

	t.Run("BootFilesPagedOut", func(t *testing.T) { checkBootFilesPagedOut(t, v, cfg) })

	// What the shim's metrics read: the boot's phases, virtiofsd, the
	// vsock backend's traffic (Check went through it).
	t.Run("Observability", func(t *testing.T) {
		p := v.Phases()
		if p.VMMStart <= 0 || p.GuestBoot <= 0 || p.AgentReady <= 0 {
			t.Errorf("phases %+v: each must have taken some time", p)
		}
		if v.VirtiofsdPid() <= 0 {
			t.Errorf("virtiofsd pid %d", v.VirtiofsdPid())
		}
		if c, ok := v.VsockCounters(); cfg.VsockMode != VsockVhost && (!ok || c.TXBytes == 0 || c.RXBytes == 0 || c.ConnsOpened == 0) {
			t.Errorf("vsock counters %+v (%v) after the agent answered", c, ok)
		}
	})

	t.Run("Sandbox", func(t *testing.T) {
		_, err := v.Agent().CreateSandbox(ctxFor(t, 20*time.Second), &agentpb.CreateSandboxRequest{
			SandboxId: cfg.ID, Hostname: "vmtest", Mounts: []*agentpb.Mount{v.SharedMount()},
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ContainerOnShare", func(t *testing.T) {
		out, code := runContainer(t, v, "c1", "sh", "-c", "echo hello from $(hostname); echo to-stderr >&2; exit 3")
		if out != "hello from vmtest\n" || code != 3 {
			t.Errorf("stdout %q exit %d, want %q and 3", out, code, "hello from vmtest\n")
		}
	})

	// A mount made under the shared directory after virtiofsd started (as
	// the shim does for each container's rootfs) must reach the guest.
	t.Run("LateMountVisible", func(t *testing.T) {
		src := filepath.Join(dir, "late-rootfs")
		if err := testrootfs.Busybox(src); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "marker"), []byte("mounted late\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(cfg.SharedDir, "c2", "rootfs")
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(target, unix.MNT_DETACH)
		out, code := runContainer(t, v, "c2", "cat", "/marker")
		if out != "mounted late\n" || code != 0 {
			t.Errorf("stdout %q exit %d, want the marker file", out, code)
		}
	})

	// Garbage on another VM's vhost-user socket fails that VM's start,
	// cleanly, and leaves this one alone.
	t.Run("GarbageOnAnotherVMsSocket", func(t *testing.T) {
		other, _ := testConfig(t, imagetest.TestInitInitrd(t))
		other.Hypervisor.KernelParams = []string{"vmpod_testinit=sleep"}
		other.DialTimeout = 20 * time.Second
		testHookBeforeHypervisor = func(state string) {
			c, err := net.Dial("unix", filepath.Join(state, "vsock.sock"))
			if err != nil {
				t.Errorf("dial vsock socket: %v", err)
				return
			}
			defer c.Close()
			c.Write([]byte("\xff\xff\xff\xff this is not vhost-user \x00\x00\x00\x00\x00\x00\x00\x00"))
			time.Sleep(100 * time.Millisecond)
		}
		defer func() { testHookBeforeHypervisor = nil }()
		if o, err := Start(ctxFor(t, time.Minute), other); err == nil {
			o.Stop(ctxFor(t, 30*time.Second))
			t.Fatal("Start succeeded with a broken vsock device")
		} else {
			t.Logf("start error: %v", err)
		}
		if _, err := v.Agent().Check(ctxFor(t, 10*time.Second), &agentpb.CheckRequest{}); err != nil {
			t.Errorf("the healthy VM's agent no longer answers: %v", err)
		}
	})

	t.Run("Jailed", func(t *testing.T) { assertJailed(t, v) })

	t.Run("Dial", func(t *testing.T) {
		// A port nobody listens on is refused, not hung.
		if c, err := v.Dial(ctxFor(t, 10*time.Second), 4444); err == nil {
			c.Close()
			t.Error("dial to a closed guest port succeeded")
		}
	})

	if err := v.Stop(ctxFor(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
	default:
		t.Error("QEMU running after Stop")
	}
	if err := v.Stop(ctxFor(t, time.Second)); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	for _, p := range []string{cfg.StateDir, v.jailDir(), v.jailID.LockPath()} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after Stop", p)
		}
	}
}

// assertJailed checks the running QEMU of v from the host: its root is
// the VM's empty jail directory, it runs as the uid allocated for it, with
// no capabilities, no way to regain privileges and a seccomp filter.
func assertJailed(t *testing.T, v *VM) {
	t.Helper()
	proc := filepath.Join("/proc", strconv.Itoa(v.Pid()))
	if root, err := os.Readlink(filepath.Join(proc, "root")); err != nil || root != v.jailDir() {
		t.Errorf("qemu root %q (%v), want %s", root, err, v.jailDir())
	}
	if ents, err := os.ReadDir(v.jailDir()); err != nil || len(ents) > 0 {
		t.Errorf("jail directory %s: %v, entries %v; want it empty", v.jailDir(), err, ents)
	}
	if st, err := os.Stat(v.jailDir()); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("jail directory %s: %v; want mode 0700", v.jailDir(), err)
	}
	status, err := os.ReadFile(filepath.Join(proc, "status"))
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.FormatUint(uint64(v.jailID.UID), 10)
	want := map[string]string{
		"Uid:":        strings.Repeat(id+"\t", 3) + id,
		"Gid:":        strings.Repeat(id+"\t", 3) + id,
		"Groups:":     id,
		"CapEff:":     "0000000000000000",
		"CapPrm:":     "0000000000000000",
		"NoNewPrivs:": "1",
		"Seccomp:":    "2",
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, val, ok := strings.Cut(line, "\t")
		if w, found := want[k]; ok && found {
			if strings.TrimSpace(val) != w {
				t.Errorf("qemu %s %q, want %q", k, strings.TrimSpace(val), w)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("qemu status lacks %v", want)
	}
	if v.jailID.UID < testJail.Start || v.jailID.UID >= testJail.Start+testJail.Count {
		t.Errorf("uid %d outside the configured range", v.jailID.UID)
	}
	if _, err := os.Stat(v.jailID.LockPath()); err != nil {
		t.Errorf("lock file of the running VM: %v", err)
	}
}

// TestMicrovm boots the microvm machine (virtio-mmio devices, the
// tsc_early_khz command line) with a debug agent and mounts the share in
// the guest.
func TestMicrovm(t *testing.T) {
	imagetest.Require(t)
	cfg, dir := testConfig(t, imagetest.AgentInitrd(t))
	cfg.Hypervisor.Machine = hypervisor.MachineMicrovm
	cfg.SharedDir = filepath.Join(dir, "shared")
	// The agent must accept the arguments Debug passes it.
	cfg.Debug = true
	if err := testrootfs.Busybox(filepath.Join(cfg.SharedDir, "c1", "rootfs")); err != nil {
		t.Fatal(err)
	}
	v, err := Start(ctxFor(t, 2*time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctxFor(t, 30*time.Second))
	_, err = v.Agent().CreateSandbox(ctxFor(t, 20*time.Second), &agentpb.CreateSandboxRequest{
		SandboxId: cfg.ID, Hostname: "vmtest", Mounts: []*agentpb.Mount{v.SharedMount()},
	})
	if err != nil {
		t.Fatalf("mounting virtio-fs on microvm: %v", err)
	}
	// The mount alone returns before virtiofsd answered FUSE_INIT; a
	// container on the share is the first real request. It hung while
	// microvm's virtio-mmio was legacy, which virtiofsd refuses.
	if out, code := runContainer(t, v, "c1", "sh", "-c", "echo on the share"); out != "on the share\n" || code != 0 {
		t.Errorf("container on the microvm share: stdout %q exit %d", out, code)
	}
	// A virtiofsd that dies under the guest takes the VM with it, with
	// the reason, instead of leaving the share's users hanging.
	if err := unix.Kill(v.VirtiofsdPid(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
		if err := v.Err(); err == nil || !strings.Contains(err.Error(), "shared directory is gone") || !strings.Contains(err.Error(), "virtiofsd") {
			t.Errorf("VM error after virtiofsd died: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("QEMU still runs 30 s after virtiofsd was killed")
	}
	if err := v.Stop(ctxFor(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentMicrovms starts two microvm guests at once, the case that
// hangs at "Marking TSC unstable" without tsc_early_khz; each must reach
// its own agent.
func TestConcurrentMicrovms(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two VMs at once; skipped with -short")
	}
	imagetest.Require(t)
	initrd := imagetest.AgentInitrd(t)
	var cfgs []Config
	for i := 0; i < 2; i++ {
		cfg, _ := testConfig(t, initrd)
		cfg.Hypervisor.Machine = hypervisor.MachineMicrovm
		cfgs = append(cfgs, cfg)
	}
	type result struct {
		v   *VM
		err error
	}
	results := make(chan result, len(cfgs))
	ctx := ctxFor(t, 3*time.Minute)
	for _, cfg := range cfgs {
		go func() {
			v, err := Start(ctx, cfg)
			results <- result{v, err}
		}()
	}
	var vms []*VM
	for range cfgs {
		r := <-results
		if r.err != nil {
			t.Error(r.err)
			continue
		}
		vms = append(vms, r.v)
	}
	for _, v := range vms {
		if _, err := v.Agent().Check(ctxFor(t, 10*time.Second), &agentpb.CheckRequest{}); err != nil {
			t.Errorf("vm %d: %v", v.Pid(), err)
		}
	}
	if len(vms) == 2 && vms[0].Pid() == vms[1].Pid() {
		t.Error("both VMs report the same QEMU")
	}
	for _, v := range vms {
		if err := v.Stop(ctxFor(t, 30*time.Second)); err != nil {
			t.Error(err)
		}
	}
}

// runContainer runs args in a container whose rootfs is <shared>/<id>/rootfs
// and returns its stdout and exit status; it removes the container.
func runContainer(t *testing.T, v *VM, id string, args ...string) (string, uint32) {
	t.Helper()
	ctx := ctxFor(t, 60*time.Second)
	spec := specconv.Example()
	spec.Process.Terminal = false
	spec.Process.Args = args
	spec.Root.Readonly = false
	spec.Hostname = "vmtest"
	specJSON, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	a := v.Agent()
	_, err = a.CreateContainer(ctx, &agentpb.CreateContainerRequest{
		ContainerId: id, Spec: specJSON,
		Rootfs: &agentpb.Rootfs{Path: filepath.Join(v.GuestSharedDir(), id, "rootfs")},
	})
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	defer func() {
		if _, err := a.RemoveContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
			t.Errorf("remove %s: %v", id, err)
		}
	}()
	// Attached before the start, as the shim does.
	conn, err := v.Dial(ctx, stdiostream.VsockPort)
	if err != nil {
		t.Fatalf("dial stdio of %s: %v", id, err)
	}
	defer conn.Close()
	if err := stdiostream.Attach(ctx, conn, stdiostream.Header{Kind: stdiostream.Stdout, ContainerID: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.StartContainer(ctx, &agentpb.ContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	out, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read stdout of %s: %v", id, err)
	}
	w, err := a.WaitProcess(ctx, &agentpb.ProcessRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
	return string(out), w.ExitStatus
}

func TestMissingKernel(t *testing.T) {
	imagetest.Require(t)
	cfg, dir := testConfig(t, imagetest.TestInitInitrd(t))
	cfg.Hypervisor.Kernel = filepath.Join(dir, "no-such-kernel")
	cfg.SharedDir = filepath.Join(dir, "shared")
	_, err := Start(ctxFor(t, time.Minute), cfg)
	if err == nil || !strings.Contains(err.Error(), cfg.Hypervisor.Kernel) {
		t.Fatalf("error %v does not name the kernel path", err)
	}
	// Nothing was started or created for the VM.
	for _, p := range []string{cfg.StateDir, cfg.SharedDir} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s created for a VM that cannot start", p)
		}
	}
}

// TestAgentNeverAnswers boots an init that sleeps: Start must give up at
// the dial timeout and kill QEMU.
func TestAgentNeverAnswers(t *testing.T) {
	imagetest.Require(t)
	cfg, _ := testConfig(t, imagetest.TestInitInitrd(t))
	cfg.Hypervisor.KernelParams = []string{"vmpod_testinit=sleep"}
	cfg.DialTimeout = 5 * time.Second
	privateJail(t, &cfg)
	_, err := Start(ctxFor(t, time.Minute), cfg)
	if err == nil || !strings.Contains(err.Error(), "did not answer within 5s") {
		t.Fatalf("error %v, want a dial timeout", err)
	}
	// leakcheck (registered in testConfig) asserts QEMU is gone.
}

// TestQEMUExitsDuringBoot: a guest that powers off before any agent runs
// fails Start with QEMU's exit; a QEMU that rejects its arguments fails it
// with QEMU's stderr.
func TestQEMUExitsDuringBoot(t *testing.T) {
	imagetest.Require(t)
	t.Run("BadArgument", func(t *testing.T) {
		cfg, _ := testConfig(t, imagetest.TestInitInitrd(t))
		cfg.Hypervisor.ExtraArgs = []string{"-machine", "q35,no-such-property=on"}
		privateJail(t, &cfg)
		_, err := Start(ctxFor(t, time.Minute), cfg)
		if err == nil || !strings.Contains(err.Error(), "no-such-property") {
			t.Fatalf("error %v does not carry QEMU's stderr", err)
		}
	})
	t.Run("GuestPowersOff", func(t *testing.T) {
		cfg, _ := testConfig(t, imagetest.TestInitInitrd(t))
		_, err := Start(ctxFor(t, 2*time.Minute), cfg)
		if err == nil || !strings.Contains(err.Error(), "qemu exited before the agent answered") ||
			!strings.Contains(err.Error(), "vmpod-testinit: powering off") {
			t.Fatalf("error %v, want QEMU's exit with the console", err)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{StateDir: dir + "/s"}, "required"},
		{Config{ID: "x", StateDir: dir + "/s", VsockMode: "virtio-serial"}, "virtio-serial"},
		{Config{ID: "x", StateDir: dir + "/s", DialTimeout: -1}, "negative"},
		{Config{ID: "x", StateDir: dir}, "already exists"},
		{Config{ID: "x", StateDir: "/run/" + strings.Repeat("d", 100)}, "longer than 107"},
		{Config{ID: "x", StateDir: dir + "/s", Jail: &jail.Range{Start: 0, Count: 1}}, "start 0"},
		{Config{ID: "x", StateDir: dir + "/s", Driver: "firecracker"}, `unknown driver "firecracker"`},
	}
	k := filepath.Join(dir, "kernel")
	os.WriteFile(k, nil, 0o644)
	for _, c := range cases {
		c.cfg.Hypervisor = hypervisor.Config{Path: k, Kernel: k, Initrd: k}
		if _, err := Start(context.Background(), c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Start(%+v): error %v, want one containing %q", c.cfg, err, c.want)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("an existing state directory was removed: %v", err)
	}
}

// TestCLHDriverChosen: Driver = clh starts the Cloud Hypervisor driver
// (here a binary that is not CH and exits at once), and a failed start
// leaves nothing behind.
func TestCLHDriverChosen(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "kernel")
	os.WriteFile(k, []byte("x"), 0o644)
	notCH := filepath.Join(dir, "not-ch")
	if err := os.WriteFile(notCH, []byte("#!/bin/sh\necho this is not cloud-hypervisor >&2\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "s")
	leakcheck.Check(t, leakcheck.Options{Roots: []string{state}})
	_, err := Start(ctxFor(t, 30*time.Second), Config{
		ID: "x", StateDir: state, Driver: DriverCLH,
		Hypervisor: hypervisor.Config{Path: notCH, Kernel: k, Initrd: k},
	})
	if err == nil || !strings.Contains(err.Error(), "clh x") {
		t.Fatalf("error %v does not come from the clh driver", err)
	}
	if hypervisor.HostInfo().KVMUsable && !strings.Contains(err.Error(), "this is not cloud-hypervisor") {
		t.Errorf("error %v lacks the binary's output", err)
	}
	if _, err := os.Stat(state); err == nil {
		t.Errorf("state directory %s left after a failed start", state)
	}
}

// BenchmarkBootToAgent measures Start (QEMU, vsock backend, agent Check)
// plus Stop, to compare with hypervisor/qemu's BenchmarkBootFloor.
func BenchmarkBootToAgent(b *testing.B) {
	imagetest.Require(b)
	initrd := imagetest.AgentInitrd(b)
	for _, machine := range []string{hypervisor.MachineQ35, hypervisor.MachineMicrovm} {
		for _, kernel := range []string{"bzImage", "vmlinux"} {
			b.Run(machine+"-"+kernel, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					cfg, _ := testConfig(b, initrd)
					cfg.Hypervisor.Machine = machine
					if kernel == "vmlinux" {
						cfg.Hypervisor.Kernel = imagetest.Vmlinux(b)
					}
					b.StartTimer()
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					v, err := Start(ctx, cfg)
					if err != nil {
						cancel()
						b.Fatal(err)
					}
					if err := v.Stop(ctx); err != nil {
						b.Error(err)
					}
					cancel()
				}
			})
		}
	}
}
