package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/vsock"
)

func TestMain(m *testing.M) { os.Exit(testbin.Run(m)) }

// vmpod runs the real command and returns its stdout, stderr and exit code.
func vmpod(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	bin := testbin.Build(t, "./cmd/vmpod", false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// The host's VMPOD_CONFIG must not leak into the test.
	cmd.Env = append(append(os.Environ(), "VMPOD_CONFIG="), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee) && ee.Exited():
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("vmpod %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	return "", "", 0
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// line returns the report line of check name.
func line(t *testing.T, out, name string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(pass|warn|fail)  ` + regexp.QuoteMeta(name) + ` +.*$`)
	l := re.FindString(out)
	if l == "" {
		t.Fatalf("no %s line in\n%s", name, out)
	}
	return l
}

// hostReady skips the test when this host lacks what vmpod needs anyway, so
// that the check's own verdict is what the test asserts.
func hostReady(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"qemu-system-x86_64", "/usr/lib/qemu/virtiofsd"} {
		if _, err := exec.LookPath(p); err != nil {
			require.Missingf(t, "needs %s (apt-get install qemu-system-x86): %v", p, err)
		}
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		require.Missing(t, "needs a kernel in /boot (apt-get install linux-image-cloud-amd64)")
	}
	return kernels[0]
}

// TestCheckThisHost runs `vmpod check` against the real host with a
// configuration naming a real kernel: it reports how VMs will run here and
// exits 0. On the build machines that means TCG and the vhost-user vsock
// backend.
func TestCheckThisHost(t *testing.T) {
	kernel := hostReady(t)
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	initrd := writeFile(t, dir, "initrd", "not empty")
	cfg := writeFile(t, dir, "vmpod.toml", "[hypervisor.qemu]\nkernel = \""+kernel+"\"\ninitrd = \""+initrd+"\"\n")
	ctrd := writeFile(t, dir, "containerd.toml", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\n")

	out, stderr, code := vmpod(t, nil, "check", "--config", cfg, "--containerd-config", ctrd)
	t.Logf("vmpod check:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, stderr)
	}
	if strings.Contains(out, "\nfail") || strings.HasPrefix(out, "fail") {
		t.Fatalf("a check failed yet the exit code is 0:\n%s", out)
	}
	for name, want := range map[string]string{
		"config":     "pass  config      " + cfg,
		"qemu":       "QEMU emulator version ",
		"kernel":     "pass  kernel      " + kernel + " (hypervisor.qemu.kernel)",
		"initrd":     "pass  initrd      " + initrd,
		"virtiofsd":  "pass  virtiofsd   /usr/lib/qemu/virtiofsd",
		"containerd": `pass  containerd  plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata in ` + ctrd,
		"tun":        "/dev/net/tun",
	} {
		if l := line(t, out, name); !strings.Contains(l, want) {
			t.Errorf("%s: got %q, want %q", name, l, want)
		}
	}

	// The accelerator and vsock verdicts follow the host.
	host := hypervisor.HostInfo()
	accel := line(t, out, "accel")
	if host.KVMUsable && host.HWVirt {
		if !strings.HasPrefix(accel, "pass  accel       kvm") {
			t.Errorf("host has KVM with vmx/svm, got %q", accel)
		}
	} else if !strings.HasPrefix(accel, "warn  accel       TCG fallback: ") || !strings.HasSuffix(accel, "VMs will be slow") {
		t.Errorf("host lacks usable KVM, got %q", accel)
	}
	vs := line(t, out, "vsock")
	if _, err := os.Stat(vsock.VhostVsockPath); err == nil {
		if !strings.HasPrefix(vs, "pass  vsock       kernel vhost-vsock") {
			t.Errorf("host has %s, got %q", vsock.VhostVsockPath, vs)
		}
	} else if !strings.HasPrefix(vs, "warn  vsock       no /dev/vhost-vsock: using vmpod's vhost-user vsock backend") {
		t.Errorf("host lacks %s, got %q", vsock.VhostVsockPath, vs)
	}
	if os.Geteuid() == 0 {
		if l := line(t, out, "tc"); !strings.HasPrefix(l, "pass") {
			t.Errorf("tc as root: %q", l)
		}
	}
	if !strings.HasPrefix(line(t, out, "cgroups"), "pass  cgroups     v") {
		t.Errorf("cgroups: %q", line(t, out, "cgroups"))
	}
}

// Without root the tc probe cannot make a network namespace: a warning, not
// a failure, and the other checks still run.
func TestCheckUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to run vmpod as another user")
	}
	// testbin's and t.TempDir's directories are private to root: copy the
	// binary where nobody can run it.
	dir, err := os.MkdirTemp("", "vmpod-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(testbin.Build(t, "./cmd/vmpod", false))
	if err != nil {
		t.Fatal(err)
	}
	bin := writeFile(t, dir, "vmpod", string(data))
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check", "--containerd-config", "/nonexistent/containerd.toml")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "VMPOD_CONFIG="}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if l := line(t, string(out), "tc"); !strings.HasPrefix(l, "warn  tc          not probed: ") {
		t.Fatalf("tc as nobody: %q", l)
	}
	line(t, string(out), "accel")
}

// A QEMU path that does not exist makes vmpod unable to run: exit 1 with
// the path and the file that named it.
func TestCheckMissingQEMU(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "vmpod.toml", "[hypervisor.qemu]\npath = \"/nonexistent/vmpod-test/qemu-system-x86_64\"\n")
	out, _, code := vmpod(t, nil, "check", "--config", cfg, "--containerd-config", filepath.Join(dir, "none.toml"))
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	l := line(t, out, "qemu")
	if !strings.HasPrefix(l, "fail") || !strings.Contains(l, "/nonexistent/vmpod-test/qemu-system-x86_64") ||
		!strings.Contains(l, "hypervisor.qemu.path in "+cfg) {
		t.Fatalf("qemu: %q", l)
	}
	if !strings.Contains(out, "fix: install QEMU") {
		t.Fatalf("no fix for the missing QEMU:\n%s", out)
	}
}

// A broken configuration is a failure naming the key and the file, and the
// host checks still run.
func TestCheckBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "vmpod.toml", "[hypervisor.qemu]\ndefault_vcpus = 0\n")
	out, _, code := vmpod(t, nil, "check", "--config", cfg, "--containerd-config", filepath.Join(dir, "none.toml"))
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	if l := line(t, out, "config"); !strings.HasPrefix(l, "fail") || !strings.Contains(l, "hypervisor.qemu.default_vcpus in "+cfg) {
		t.Fatalf("config: %q", l)
	}
	line(t, out, "accel")
	line(t, out, "cgroups")

	// $VMPOD_CONFIG is used without --config, and --config beats it.
	good := writeFile(t, dir, "good.toml", "[agent]\ndebug = true\n")
	out, _, _ = vmpod(t, []string{"VMPOD_CONFIG=" + cfg}, "check", "--containerd-config", filepath.Join(dir, "none.toml"))
	if l := line(t, out, "config"); !strings.Contains(l, cfg) {
		t.Fatalf("VMPOD_CONFIG ignored: %q", l)
	}
	out, _, _ = vmpod(t, []string{"VMPOD_CONFIG=" + cfg}, "check", "--config", good, "--containerd-config", filepath.Join(dir, "none.toml"))
	if l := line(t, out, "config"); !strings.HasPrefix(l, "pass  config      "+good) {
		t.Fatalf("--config does not beat VMPOD_CONFIG: %q", l)
	}
}

// `vmpod env` shows the two keys the file overrides with the file as
// their source, and every other key as default.
func TestEnv(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "vmpod.toml", "[hypervisor.qemu]\ndefault_vcpus = 2\n\n[agent]\ndial_timeout = \"45s\"\n")
	out, stderr, code := vmpod(t, nil, "env", "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Logf("vmpod env:\n%s", out)
	if !strings.Contains(out, "# "+cfg+"\n") {
		t.Fatalf("header does not name %s", cfg)
	}
	var fromFile []string
	for l := range strings.Lines(out) {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || l[0] == '[' {
			continue
		}
		switch {
		case strings.HasSuffix(l, "  # "+cfg):
			fromFile = append(fromFile, l)
		case !strings.HasSuffix(l, "  # default"):
			t.Errorf("no source on %q", l)
		}
	}
	want := []string{"default_vcpus = 2  # " + cfg, `dial_timeout = "45s"  # ` + cfg}
	if strings.Join(fromFile, "\n") != strings.Join(want, "\n") {
		t.Fatalf("keys from the file: got %q, want %q", fromFile, want)
	}
	if !strings.Contains(out, "\ndefault_memory = 512  # default\n") {
		t.Fatalf("default_memory not shown as default:\n%s", out)
	}

	bad := writeFile(t, dir, "bad.toml", "[agent]\ntimeout = \"1s\"\n")
	if _, stderr, code := vmpod(t, nil, "env", "--config", bad); code != 1 || !strings.Contains(stderr, "agent.timeout in "+bad) {
		t.Fatalf("bad file: exit %d, %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	out, _, code := vmpod(t, nil, "version")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"vmpod dev\n", "go " + runtime.Version() + " ", "agent protocol vmpod.agent.v1\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("%q lacks %q", out, want)
		}
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout bool // usage on stdout rather than stderr
	}{
		{nil, 2, false},
		{[]string{"frobnicate"}, 2, false},
		{[]string{"check", "--no-such-flag"}, 2, false},
		{[]string{"env", "extra"}, 2, false},
		{[]string{"help"}, 0, true},
	} {
		out, stderr, code := vmpod(t, nil, tc.args...)
		text := stderr
		if tc.stdout {
			text = out
		}
		if code != tc.code || !strings.Contains(text, "usage: vmpod <command>") {
			t.Errorf("vmpod %q: exit %d (want %d)\nstdout %q\nstderr %q", tc.args, code, tc.code, out, stderr)
		}
	}
}
