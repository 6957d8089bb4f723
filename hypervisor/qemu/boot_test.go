package qemu

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

// The main goroutine keeps the main thread, which Go never ends: the
// tests' goroutines run on threads that can (TestOutlivesStartingThread).
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	code := testbin.RunVMs(m)
	imagetest.Cleanup()
	os.Exit(code)
}

// bootConfig is a test guest around image/internal/testinit.
func bootConfig(t testing.TB, params ...string) hypervisor.Config {
	t.Helper()
	imagetest.Require(t)
	state := filepath.Join(t.TempDir(), "state")
	initrd := imagetest.TestInitInitrd(t)
	leakcheck.Check(t, leakcheck.Options{Roots: []string{state}})
	t.Cleanup(func() { leakcheck.NoDirs(t, filepath.Join(state, "qmp.sock")) })
	return hypervisor.Config{
		ID: "test", Path: imagetest.QEMUPath, Kernel: imagetest.Kernel(t), Initrd: initrd,
		KernelParams: params, StateDir: state, Accel: hypervisor.AccelTCG,
	}
}

func start(t testing.TB, cfg hypervisor.Config) *QEMU {
	t.Helper()
	q, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	return q
}

// TestBootPowerOff boots both kernel formats on both machine types to an
// init that powers off, and checks the console reached the log.
func TestBootPowerOff(t *testing.T) {
	for _, machine := range []string{hypervisor.MachineQ35, hypervisor.MachineMicrovm} {
		for _, kernel := range []string{"bzImage", "vmlinux"} {
			t.Run(machine+"-"+kernel, func(t *testing.T) {
				cfg := bootConfig(t)
				cfg.Machine = machine
				if kernel == "vmlinux" {
					cfg.Kernel = imagetest.Vmlinux(t)
				}
				q := start(t, cfg)
				if q.Pid() <= 0 {
					t.Errorf("pid %d", q.Pid())
				}
				select {
				case <-q.Done():
				case <-time.After(90 * time.Second):
					t.Fatalf("guest did not power off; console:\n%s", q.ConsoleTail())
				}
				if err := q.Err(); err != nil {
					t.Errorf("exit after guest poweroff: %v", err)
				}
				if !strings.Contains(q.ConsoleTail(), "vmpod-testinit: powering off") {
					t.Errorf("console does not show the init's output:\n%s", q.ConsoleTail())
				}
			})
		}
	}
}

func TestPauseResumeStop(t *testing.T) {
	q := start(t, bootConfig(t, "vmpod_testinit=sleep"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, step := range []struct {
		do   func(context.Context) error
		want string
	}{{q.Pause, "paused"}, {q.Resume, "running"}} {
		if err := step.do(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := q.Status(ctx); err != nil || st != step.want {
			t.Errorf("status %q, %v; want %q", st, err, step.want)
		}
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.Done():
	default:
		t.Fatal("Stop returned before QEMU exited")
	}
	if err := q.Err(); err != nil {
		t.Errorf("exit after QMP quit: %v", err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := q.Pause(ctx); err == nil {
		t.Error("Pause after Stop succeeded")
	}
}

func TestStopKillsUnresponsive(t *testing.T) {
	q := start(t, bootConfig(t, "vmpod_testinit=sleep"))
	// A QMP client that never answers stands in for a wedged QEMU: Stop
	// must fall back to SIGKILL when its context ends.
	q.mu.Lock()
	q.qmp.Close()
	q.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("exit error %v, want one saying it was killed", err)
	}
}

func TestStartErrorIncludesStderr(t *testing.T) {
	cfg := bootConfig(t)
	cfg.ExtraArgs = []string{"-device", "no-such-device-model"}
	q, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = q.Start(ctx)
	if err == nil {
		q.Stop(ctx)
		t.Fatal("QEMU with a bogus device started")
	}
	if !strings.Contains(err.Error(), "no-such-device-model") {
		t.Errorf("error does not carry QEMU's stderr: %v", err)
	}
	select {
	case <-q.Done():
	default:
		t.Error("QEMU still running after a failed Start")
	}
	q.Stop(ctx)
}

func TestMissingFiles(t *testing.T) {
	for _, field := range []string{"Path", "Kernel", "Initrd"} {
		t.Run(field, func(t *testing.T) {
			dir := t.TempDir()
			present := filepath.Join(dir, "present")
			if err := os.WriteFile(present, nil, 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := hypervisor.Config{ID: "m", Path: present, Kernel: present, Initrd: present, StateDir: filepath.Join(dir, "state")}
			missing := filepath.Join(dir, "missing-"+field)
			switch field {
			case "Path":
				cfg.Path = missing
			case "Kernel":
				cfg.Kernel = missing
			case "Initrd":
				cfg.Initrd = missing
			}
			q, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = q.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), missing) {
				t.Errorf("error %v does not name %s", err, missing)
			}
			if q.Pid() != 0 {
				t.Error("a process started despite the missing file")
			}
			leakcheck.NoDirs(t, cfg.StateDir)
		})
	}
}

// BenchmarkBootFloor is the floor other boot benchmarks compare against:
// QEMU start to exit for the same kernel and initrd machinery around an
// init that powers off at once.
func BenchmarkBootFloor(b *testing.B) {
	for _, machine := range []string{hypervisor.MachineQ35, hypervisor.MachineMicrovm} {
		for _, kernel := range []string{"bzImage", "vmlinux"} {
			b.Run(machine+"-"+kernel, func(b *testing.B) {
				cfg := bootConfig(b)
				cfg.Machine = machine
				if kernel == "vmlinux" {
					cfg.Kernel = imagetest.Vmlinux(b)
				}
				for i := 0; i < b.N; i++ {
					bootToExit(b, cfg)
				}
			})
		}
	}
}

// BenchmarkInitrd boots the floor init in an initrd the size of the
// agent's (the agent binary rides along as a file): uncompressed and
// gzipped, to weigh the smaller read against decompression under TCG, and
// without the on-demand kernel modules, to weigh what carrying them (not
// loading them) costs every boot.
func BenchmarkInitrd(b *testing.B) {
	cfg := bootConfig(b)
	agent := testbin.Agent(b)
	init := testbin.Build(b, "./image/internal/testinit", true)
	for _, v := range []struct {
		name        string
		compression string
		onDemand    []string // nil: image.DefaultOnDemand
	}{
		{image.CompressNone, image.CompressNone, nil},
		{image.CompressGzip, image.CompressGzip, nil},
		{"no-on-demand-modules", image.CompressNone, []string{}},
	} {
		b.Run(v.name, func(b *testing.B) {
			cfg := cfg
			cfg.Initrd = filepath.Join(b.TempDir(), "initrd-"+v.name)
			res, err := image.BuildInitrd(image.Options{
				Init: init, Compression: v.compression, OnDemand: v.onDemand, Output: cfg.Initrd,
				ExtraFiles: map[string]string{"/usr/bin/vmpod-agent": agent},
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(res.Size)/(1<<20), "MiB")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				bootToExit(b, cfg)
			}
		})
	}
}

// bootToExit starts QEMU and waits for the guest to power off.
func bootToExit(b *testing.B, cfg hypervisor.Config) {
	b.Helper()
	q, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	defer q.Stop(context.Background())
	if err := q.Start(ctx); err != nil {
		b.Fatal(err)
	}
	select {
	case <-q.Done():
	case <-ctx.Done():
		b.Fatalf("guest did not power off: %s", q.ConsoleTail())
	}
	if err := q.Err(); err != nil {
		b.Fatal(err)
	}
}

// TestStartWithTap hands QEMU a real tap: QEMU must accept the descriptor
// and the NIC arguments. The guest stays paused (-S); no boot is needed.
func TestStartWithTap(t *testing.T) {
	cfg := bootConfig(t)
	leakcheck.Check(t, leakcheck.Options{LinkPrefixes: []string{"vmpodqt"}})
	tap, err := openTap("vmpodqt0")
	if err != nil {
		require.Missingf(t, "cannot create a tap: %v", err)
	}
	cfg.Net = []hypervisor.NetDevice{{Tap: tap, MAC: net.HardwareAddr{0x02, 0x42, 0, 0, 0, 7}, MTU: 1400}}
	cfg.ExtraArgs = []string{"-S"}
	q := start(t, cfg)
	tap.Close() // QEMU holds its own copy now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := q.Status(ctx); err != nil || st != "prelaunch" && st != "paused" {
		t.Errorf("status %q, %v", st, err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// openTap creates a non-persistent tap the way vmpod's network package
// does; it disappears with the last descriptor.
func openTap(name string) (*os.File, error) {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		f.Close()
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// TestOutlivesStartingThread starts QEMU from a goroutine locked to its OS
// thread that then exits, ending the thread, as network.inNamespace does
// with a thread it could not restore: QEMU has Pdeathsig SIGKILL, and must
// keep running (lockedfork forks it from a thread of its own).
func TestOutlivesStartingThread(t *testing.T) {
	cfg := bootConfig(t)
	cfg.ExtraArgs = []string{"-S"} // paused: no boot needed
	q, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		started <- q.Start(ctx)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	select {
	case <-q.Done():
		t.Fatalf("QEMU died with the thread that started it: %v", q.Err())
	case <-time.After(2 * time.Second):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := q.Status(ctx); err != nil || st != "prelaunch" && st != "paused" {
		t.Errorf("status %q, %v", st, err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
