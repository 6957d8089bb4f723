package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/internal/leakcheck"
)

func TestCheckAccel(t *testing.T) {
	for _, tc := range []struct {
		name      string
		requested string
		host      hypervisor.Host
		status    Status
		want      string
	}{
		{"auto with kvm and vmx", "auto", hypervisor.Host{KVMUsable: true, HWVirt: true}, Pass, "kvm: "},
		{"auto, nested /dev/kvm without vmx (this machine)", "auto", hypervisor.Host{KVMUsable: true}, Warn, "TCG fallback: CPU lacks vmx/svm — VMs will be slow"},
		{"auto, no /dev/kvm", "auto", hypervisor.Host{HWVirt: true}, Warn, "TCG fallback: /dev/kvm missing or unusable — VMs will be slow"},
		{"auto, neither", "auto", hypervisor.Host{}, Warn, "TCG fallback: /dev/kvm missing or unusable, CPU lacks vmx/svm"},
		{"tcg configured", "tcg", hypervisor.Host{KVMUsable: true, HWVirt: true}, Pass, "tcg (configured)"},
		{"kvm configured, no /dev/kvm", "kvm", hypervisor.Host{HWVirt: true}, Fail, "/dev/kvm cannot be opened"},
		{"kvm configured without vmx", "kvm", hypervisor.Host{KVMUsable: true}, Warn, "neither vmx nor svm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkAccel(tc.requested, tc.host)
			if r.Status != tc.status || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("got %s %q, want %s containing %q", r.Status, r.Reason, tc.status, tc.want)
			}
			if r.Status != Pass && r.Fix == "" {
				t.Fatalf("%s without a fix", r.Status)
			}
		})
	}
}

// devicesQ35 is an excerpt of QEMU 7.2's `-device help`.
const devicesQ35 = `name "vhost-user-vsock-device", bus virtio-bus
name "vhost-user-vsock-pci", bus PCI
name "vhost-vsock-device", bus virtio-bus
name "vhost-vsock-pci", bus PCI
`

func TestCheckVsock(t *testing.T) {
	for _, tc := range []struct {
		name, mode, machine string
		kernelDev           bool
		devices             string
		status              Status
		want                string
	}{
		{"auto without /dev/vhost-vsock (this machine)", "auto", "q35", false, devicesQ35, Warn, "using vmpod's vhost-user vsock backend (QEMU vhost-user-vsock-pci)"},
		{"auto with /dev/vhost-vsock", "auto", "q35", true, devicesQ35, Pass, "kernel vhost-vsock (/dev/vhost-vsock, QEMU vhost-vsock-pci)"},
		{"microvm uses the mmio device", "auto", "microvm", false, devicesQ35, Warn, "vhost-user-vsock-device"},
		{"vhost-user configured", "vhost-user", "q35", true, devicesQ35, Pass, "vhost-user vsock backend (configured"},
		{"vhost configured without the device", "vhost", "q35", false, devicesQ35, Fail, "/dev/vhost-vsock is missing"},
		{"QEMU without the device", "auto", "q35", false, `name "virtio-net-pci", bus PCI`, Fail, "QEMU has no vhost-user-vsock-pci device"},
		{"QEMU not probed", "auto", "q35", false, "", Warn, "vhost-user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkVsock(tc.mode, tc.machine, tc.kernelDev, tc.devices)
			if r.Status != tc.status || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("got %s %q, want %s containing %q", r.Status, r.Reason, tc.status, tc.want)
			}
		})
	}
}

// mountinfoHybrid is this build machine's layout: v1 controllers, an empty
// cgroup2 at /sys/fs/cgroup/unified.
const mountinfoHybrid = `22 1 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 30 0:35 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
39 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func TestCheckCgroups(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo string
		readErr         error
		status          Status
		want            string
	}{
		{"hybrid", mountinfoHybrid, nil, Pass, "v1 hybrid: controllers cpu, cpuacct, memory on v1; cgroup2 at /sys/fs/cgroup/unified"},
		{"unified", "29 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n", nil, Pass, "v2 (unified) at /sys/fs/cgroup"},
		{"legacy", "31 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n", nil, Pass, "v1 (legacy): controllers pids"},
		{"none", "22 1 0:20 / /sys rw - sysfs sysfs rw\n", nil, Warn, "no cgroup filesystem"},
		{"garbage", "no separator here\n - \n1 2 3 - cgroup2\n", nil, Warn, "no cgroup filesystem"},
		{"unreadable", "", errors.New("boom"), Warn, "cannot read the mount table: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkCgroups(tc.mountinfo, tc.readErr)
			if r.Status != tc.status || r.Reason != tc.want && !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("got %s %q, want %s containing %q", r.Status, r.Reason, tc.status, tc.want)
			}
		})
	}
}

func TestCheckTun(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "tun")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name, model, path string
		status            Status
		want              string
	}{
		{"char device", "tcfilter", "/dev/null", Pass, "/dev/null"},
		{"regular file", "tcfilter", regular, Warn, "not a character device"},
		{"missing", "tcfilter", missing, Warn, "no such file or directory: pods with a network namespace cannot get a tap"},
		{"missing, no networking", "none", missing, Pass, "not needed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkTun(tc.model, tc.path)
			if r.Status != tc.status || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("got %s %q, want %s containing %q", r.Status, r.Reason, tc.status, tc.want)
			}
		})
	}
}

func TestCheckTC(t *testing.T) {
	if r := checkTC("none"); r.Status != Pass {
		t.Fatalf("network_model none: got %s %q", r.Status, r.Reason)
	}
	r := checkTC("tcfilter")
	if os.Geteuid() != 0 {
		if r.Status != Warn || !strings.Contains(r.Reason, "not probed") {
			t.Fatalf("as non-root: got %s %q, want a not-probed warning", r.Status, r.Reason)
		}
		return
	}
	// As root on these machines (DESIGN.md: u32 and mirred work) the probe
	// must pass; elsewhere the reason says which step failed.
	if r.Status != Pass {
		t.Fatalf("got %s %q", r.Status, r.Reason)
	}
	// No thread of the process was left in the scratch namespace.
	want, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net")); err == nil && ns != want {
			t.Errorf("thread %s is in %s, not %s", task.Name(), ns, want)
		}
	}
}

func TestContainerdRuntimes(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		status     Status
		want       string
	}{
		{"v2 with kata", `version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
`, Pass, `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata in /c.toml`},
		{"v2 without", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/usr/lib/cni\"\n", Warn, "no runtime with runtime_type"},
		{"bad toml", "version = = 2", Warn, "/c.toml"},
		{"runtime_type not a string", "[a]\nruntime_type = 2\n", Warn, "no runtime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := containerdRuntimes("/c.toml", []byte(tc.data))
			if r.Status != tc.status || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("got %s %q, want %s containing %q", r.Status, r.Reason, tc.status, tc.want)
			}
		})
	}
	// The fix is the table for the file's version.
	for version, want := range map[string]string{
		"":              "[plugins.cri.containerd.runtimes.kata]",
		"version = 2\n": `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]`,
		"version = 3\n": `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata]`,
	} {
		r := containerdRuntimes("/c.toml", []byte(version))
		if !strings.Contains(r.Fix, want+"\n  runtime_type = \"io.containerd.kata.v2\"") {
			t.Errorf("%q: fix %q lacks %s", version, r.Fix, want)
		}
	}
	r := checkContainerdConfig(filepath.Join(t.TempDir(), "missing.toml"))
	if r.Status != Warn || !strings.Contains(r.Reason, "missing.toml") || !strings.Contains(r.Fix, "version = 2") {
		t.Fatalf("missing file: got %s %q fix %q", r.Status, r.Reason, r.Fix)
	}
}

// TestContainerdDropIn: with containerd 2.x the runtime may come from a
// drop-in that config.toml imports (the shipped containerd-v3.toml in
// conf.d); check finds it there, and only there when it is imported.
func TestContainerdDropIn(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.toml")
	confd := filepath.Join(dir, "conf.d")
	if err := os.MkdirAll(confd, 0o755); err != nil {
		t.Fatal(err)
	}
	snippet, err := os.ReadFile("../config/containerd-runtime-v3.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confd, "vmpod.toml"), snippet, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, main string
		status     Status
		want       string
	}{
		{"glob", "version = 4\nimports = [\"" + confd + "/*.toml\"]\n", Pass, filepath.Join(confd, "vmpod.toml")},
		{"relative path", "version = 3\nimports = [\"conf.d/vmpod.toml\"]\n", Pass, filepath.Join(confd, "vmpod.toml")},
		{"not imported", "version = 3\n", Warn, "conf.d/"},
		{"glob matches nothing", "version = 3\nimports = [\"" + dir + "/none/*.toml\"]\n", Warn, "no runtime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(conf, []byte(tc.main), 0o644); err != nil {
				t.Fatal(err)
			}
			r := checkContainerdConfig(conf)
			if r.Status != tc.status || !strings.Contains(r.Reason+r.Fix, tc.want) {
				t.Fatalf("got %s %q (fix %q), want %s containing %q", r.Status, r.Reason, r.Fix, tc.status, tc.want)
			}
		})
	}
}

func TestKernelFormat(t *testing.T) {
	dir := t.TempDir()
	bz := make([]byte, 0x300)
	copy(bz[0x202:], "HdrS")
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" for accepted
	}{
		{"bzImage", bz, ""},
		{"ELF without a PVH note", []byte("\x7fELF\x02\x01\x01"), "not a readable ELF"},
		{"text", []byte("#!/bin/sh\necho hi\n"), "neither a bzImage nor an ELF vmlinux"},
		{"empty", nil, "neither a bzImage nor an ELF vmlinux"},
		{"short bzImage", bz[:0x204], "neither a bzImage nor an ELF vmlinux"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		if err := os.WriteFile(p, tc.data, 0o600); err != nil {
			t.Fatal(err)
		}
		note, err := kernelFormat(p)
		switch {
		case tc.want == "" && (err != nil || !strings.Contains(note, "features not checked")):
			t.Errorf("%s: got %q, %v; want accepted, features unchecked", tc.name, note, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	// A configuration next to the kernel that lacks vsock fails it.
	p := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(p+".config", []byte("CONFIG_VIRTIO_FS=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_OVERLAY_FS=y\nCONFIG_MEMCG=y\nCONFIG_SECCOMP_FILTER=y\nCONFIG_BLK_DEV_INITRD=y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := kernelFormat(p); err == nil || !strings.Contains(err.Error(), "lacks vsock") {
		t.Errorf("kernel without vsock: got %v", err)
	}
}

func TestQEMUVersion(t *testing.T) {
	out := "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n"
	if got := qemuVersion(out); got != "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" {
		t.Fatalf("got %q", got)
	}
	if got := qemuVersion("qemu-img version 7.2\n"); got != "" {
		t.Fatalf("got %q for another program", got)
	}
}

// writeConfig writes a vmpod configuration file and loads it.
func writeConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmpod.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func writeScript(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "fake-qemu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckQEMU(t *testing.T) {
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	ctx := context.Background()

	good := writeScript(t, dir, `echo "QEMU emulator version 9.9.9"`)
	path, r := checkQEMU(ctx, writeConfig(t, "[hypervisor.qemu]\npath = \""+good+"\"\n"))
	if r.Status != Pass || path != good || r.Reason != good+": QEMU emulator version 9.9.9" {
		t.Fatalf("got %q %s %q", path, r.Status, r.Reason)
	}

	cfg := writeConfig(t, "[hypervisor.qemu]\npath = \"/nonexistent/qemu\"\n")
	if path, r := checkQEMU(ctx, cfg); r.Status != Fail || path != "" ||
		!strings.Contains(r.Reason, "/nonexistent/qemu") || !strings.Contains(r.Reason, cfg.Source) {
		t.Fatalf("missing binary: got %q %s %q", path, r.Status, r.Reason)
	}

	crash := filepath.Join(t.TempDir(), "crash")
	if err := os.WriteFile(crash, []byte("#!/bin/sh\necho broken >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, r := checkQEMU(ctx, writeConfig(t, "[hypervisor.qemu]\npath = \""+crash+"\"\n")); r.Status != Fail ||
		!strings.Contains(r.Reason, "exit status 3: broken") {
		t.Fatalf("failing binary: got %s %q", r.Status, r.Reason)
	}

	// A binary that never answers is killed when ctx ends.
	hang := filepath.Join(dir, "hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, r := checkQEMU(ctx, writeConfig(t, "[hypervisor.qemu]\npath = \""+hang+"\"\n")); r.Status != Fail ||
		!strings.Contains(r.Reason, "no answer") {
		t.Fatalf("hanging binary: got %s %q", r.Status, r.Reason)
	}
}

func TestCheckAsset(t *testing.T) {
	dir := t.TempDir()
	notKernel := filepath.Join(dir, "kernel")
	empty := filepath.Join(dir, "initrd")
	for _, p := range []string{notKernel, empty} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(notKernel, []byte("not a kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "[hypervisor.qemu]\nkernel = \""+notKernel+"\"\ninitrd = \""+empty+"\"\n")
	q := cfg.Hypervisor.QEMU
	if r := checkAsset(cfg, "kernel", "hypervisor.qemu.kernel", q.Kernel, cfg.KernelPath, kernelFormat); r.Status != Fail ||
		!strings.Contains(r.Reason, notKernel+" is neither a bzImage nor an ELF vmlinux") {
		t.Fatalf("kernel: got %s %q", r.Status, r.Reason)
	}
	if r := checkAsset(cfg, "initrd", "hypervisor.qemu.initrd", q.Initrd, cfg.InitrdPath, initrdFormat); r.Status != Fail ||
		!strings.Contains(r.Reason, empty+" is empty") {
		t.Fatalf("initrd: got %s %q", r.Status, r.Reason)
	}

	// Unset, the search paths are listed, whether found or not.
	old := config.ShareDir
	config.ShareDir = filepath.Join(dir, "share")
	t.Cleanup(func() { config.ShareDir = old })
	cfg = writeConfig(t, "")
	r := checkAsset(cfg, "kernel", "hypervisor.qemu.kernel", "", cfg.KernelPath, kernelFormat)
	if r.Status != Fail || !strings.Contains(r.Reason, filepath.Join(dir, "share", config.KernelName)) {
		t.Fatalf("search: got %s %q", r.Status, r.Reason)
	}
	if err := os.MkdirAll(config.ShareDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(config.ShareDir, config.InitrdName), []byte("initrd"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = checkAsset(cfg, "initrd", "hypervisor.qemu.initrd", "", cfg.InitrdPath, initrdFormat)
	if r.Status != Pass || !strings.Contains(r.Reason, "(searched "+config.ShareDir) {
		t.Fatalf("found: got %s %q", r.Status, r.Reason)
	}
}

func TestWrite(t *testing.T) {
	var b bytes.Buffer
	err := Write(&b, []Result{
		{Name: "qemu", Status: Pass, Reason: "/usr/bin/qemu", Fix: "not shown"},
		{Name: "containerd", Status: Warn, Reason: "line\nbreak", Fix: "add:\n[a]\n  b = 1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "pass  qemu        /usr/bin/qemu\n" +
		"warn  containerd  line break\n" +
		"                  fix: add:\n" +
		"                       [a]\n" +
		"                         b = 1\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	if Failed([]Result{{Status: Pass}, {Status: Warn}}) || !Failed([]Result{{Status: Warn}, {Status: Fail}}) {
		t.Fatal("Failed disagrees with the statuses")
	}
}
