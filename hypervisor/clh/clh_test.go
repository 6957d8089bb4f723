package clh

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/clh/internal/chtest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/vsock"
)

// fakeEnv makes the test binary, re-executed, play cloud-hypervisor
// (chtest.Main).
const fakeEnv = "VMPOD_CLH_TEST_FAKE"

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) == "1" {
		os.Exit(chtest.Main(os.Args[1:]))
	}
	// Only a real CH boots a guest: then take the VM tests' lock.
	if _, err := exec.LookPath(DefaultPath); err == nil {
		os.Exit(testbin.RunVMs(m))
	}
	os.Exit(m.Run())
}

// fakeConfig is a guest for the stand-in binary: every device the driver
// configures, a tap passed by descriptor and one by name.
func fakeConfig(t *testing.T, mode string) (hypervisor.Config, *os.File) {
	t.Helper()
	t.Setenv(fakeEnv, "1")
	t.Setenv(chtest.ModeEnv, mode)
	old := hostInfo
	hostInfo = func() hypervisor.Host { return hypervisor.Host{KVMUsable: true} }
	t.Cleanup(func() { hostInfo = old })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	leakcheck.Check(t, leakcheck.Options{Roots: []string{state}})
	for _, f := range []string{"vmlinux", "initrd", "fs.sock"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tap, err := os.CreateTemp(dir, "tap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	mac1, _ := net.ParseMAC("02:00:00:00:00:01")
	mac2, _ := net.ParseMAC("02:00:00:00:00:02")
	return hypervisor.Config{
		ID: "test", Path: exe, Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd"),
		KernelParams: []string{"vmpod.debug=1"}, VCPUs: 2, MemoryMiB: 256, StateDir: state,
		Vsock:    &hypervisor.Vsock{GuestCID: 3, HybridSocket: filepath.Join(state, "vsock.sock")},
		SharedFS: &hypervisor.SharedFS{Socket: filepath.Join(dir, "fs.sock"), Tag: "vmpod"},
		Net: []hypervisor.NetDevice{
			{Tap: tap, MAC: mac1, MTU: 1400},
			{TapName: "tap-by-name", MAC: mac2},
		},
	}, tap
}

func newCLH(t *testing.T, cfg hypervisor.Config) *CLH {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Stop(ctx)
	})
	return c
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// TestLifecycle runs start, boot, pause, resume, info and stop against the
// stand-in, which checks every body against the OpenAPI shapes and every
// call against the VM's state.
func TestLifecycle(t *testing.T) {
	cfg, tap := fakeConfig(t, "")
	c := newCLH(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Pid() <= 0 {
		t.Errorf("pid %d", c.Pid())
	}
	cmdline, _ := os.ReadFile("/proc/" + itoa(c.Pid()) + "/cmdline")
	if !strings.Contains(string(cmdline), "--seccomp\x00true") {
		t.Errorf("CH's seccomp is not on: %q", cmdline)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(c.ConsoleTail(), chtest.BootLine); {
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q; it has %q", chtest.BootLine, c.ConsoleTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	state := func(want string) {
		t.Helper()
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State != want {
			t.Fatalf("vm.info state %q, want %q", info.State, want)
		}
		if info.MemoryActualSize != 256<<20 {
			t.Errorf("memory %d, want %d", info.MemoryActualSize, 256<<20)
		}
	}
	state(StateRunning)
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	state(StatePaused)
	// Out of order: CH refuses, and the driver reports CH's own words.
	err := c.Pause(ctx)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 500 || !strings.Contains(err.Error(), "Invalid VM state transition: Paused to Paused") {
		t.Errorf("second pause: %v; want CH's 500 with the state transition", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	state(StateRunning)

	// The hybrid vsock the guest serves, through vmpod's own dialer.
	conn, err := vsock.DialHybrid(ctx, cfg.Vsock.HybridSocket, 1024)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("ping"))
	buf := make([]byte, 4)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Errorf("vsock echo %q, %v", buf, err)
	}
	conn.Close()

	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := c.Err(); err != nil {
		t.Errorf("exit after vmm.shutdown: %v", err)
	}
	// The stand-in lists the NICs it got at vmm.shutdown: the tap's own
	// descriptor arrived with vm.add-net, the named one came without.
	out := c.Stderr()
	if want := "net vmpod-net0 fds=1 ino=" + utoa(inode(t, tap)); !strings.Contains(out, want) {
		t.Errorf("CH output lacks %q:\n%s", want, out)
	}
	if !strings.Contains(out, "net vmpod-net1 fds=0") {
		t.Errorf("CH output lacks the tap added by name:\n%s", out)
	}
	for _, p := range []string{c.APISocket(), c.ConsolePath()} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.Pause(ctx); err == nil {
		t.Error("Pause after Stop succeeded")
	}
}

func startErr(t *testing.T, mode string, timeout time.Duration) (*CLH, error, time.Duration) {
	t.Helper()
	cfg, _ := fakeConfig(t, mode)
	c := newCLH(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	begin := time.Now()
	err := c.Start(ctx)
	took := time.Since(begin)
	if err == nil {
		t.Fatalf("Start succeeded with %s=%s", chtest.ModeEnv, mode)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("CH still runs after a failed Start")
	}
	return c, err, took
}

func TestExitDuringCreate(t *testing.T) {
	_, err, _ := startErr(t, "exit-on-create", 30*time.Second)
	for _, want := range []string{"create the VM", "exit status 1", "dying during vm.create"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestBootRefused(t *testing.T) {
	_, err, _ := startErr(t, "refuse-boot", 30*time.Second)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Endpoint != "vm.boot" || apiErr.Status != 500 {
		t.Fatalf("error %v is not CH's refusal of vm.boot", err)
	}
	if !strings.Contains(err.Error(), "boot the VM") || !strings.Contains(err.Error(), "Kernel is not a valid ELF") {
		t.Errorf("error does not carry CH's error chain: %v", err)
	}
}

func TestSocketNeverAppears(t *testing.T) {
	_, err, took := startErr(t, "no-socket", 1500*time.Millisecond)
	if !strings.Contains(err.Error(), "did not appear within") {
		t.Errorf("error does not say the socket never appeared: %v", err)
	}
	if took > 5*time.Second {
		t.Errorf("Start took %s with a 1.5s context", took)
	}
}

func TestGarbageAnswer(t *testing.T) {
	_, err, took := startErr(t, "garbage", 20*time.Second)
	if !strings.Contains(err.Error(), "unreadable answer") {
		t.Errorf("error does not say the answer was unreadable: %v", err)
	}
	if took > 10*time.Second {
		t.Errorf("Start took %s on a garbage answer", took)
	}
}

func TestNewRefuses(t *testing.T) {
	base := hypervisor.Config{ID: "x", StateDir: "/run/x", Kernel: "/k", Initrd: "/i"}
	for name, mut := range map[string]func(*hypervisor.Config){
		"vhost-user vsock": func(c *hypervisor.Config) { c.Vsock = &hypervisor.Vsock{VhostUserSocket: "/s", GuestCID: 3} },
		"tcg":              func(c *hypervisor.Config) { c.Accel = hypervisor.AccelTCG },
		"no tap":           func(c *hypervisor.Config) { c.Net = []hypervisor.NetDevice{{MAC: make(net.HardwareAddr, 6)}} },
	} {
		cfg := base
		mut(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := New(base, WithJail(Jail{UID: 0, GID: 5})); err == nil {
		t.Error("a jail as root was accepted")
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]int{
		"cloud-hypervisor v40.0.0": 40, "v41.0": 41, "v40.0-12-gabcdef-dirty": 40, "cloud-hypervisor v39.0.0": 39,
	} {
		major, _, err := ParseVersion(in)
		if err != nil || major != want {
			t.Errorf("ParseVersion(%q) = %d, %v; want %d", in, major, err, want)
		}
	}
	if err := CheckVersion("cloud-hypervisor v39.0.0"); err == nil {
		t.Error("v39 accepted")
	}
	if err := CheckVersion("v40.0"); err != nil {
		t.Error(err)
	}
	if _, _, err := ParseVersion("garbage"); err == nil {
		t.Error("no version accepted")
	}
}
