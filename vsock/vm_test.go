package vsock_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/vsock"
)

const (
	qemuPath  = "/usr/bin/qemu-system-x86_64"
	guestCID  = 3
	bootLimit = 60 * time.Second
)

// Guest services of vsock/internal/guestecho.
const (
	portEcho    = 5000
	portSink    = 5001
	portSource  = 5002
	portDialer  = 5003
	portDiscard = 5004
)

var (
	initrdOnce sync.Once
	initrdPath string
	initrdErr  error
	initrdDir  string
)

func TestMain(m *testing.M) {
	code := testbin.RunVMs(m)
	if initrdDir != "" {
		os.RemoveAll(initrdDir)
	}
	os.Exit(code)
}

// guestInitrd builds, once, an initrd whose /init is guestecho.
func guestInitrd(t testing.TB) string {
	t.Helper()
	bin := testbin.Build(t, "./vsock/internal/guestecho", true)
	initrdOnce.Do(func() {
		initrdDir, initrdErr = os.MkdirTemp("", "vmpod-vsock-initrd-")
		if initrdErr != nil {
			return
		}
		initrdPath = filepath.Join(initrdDir, "guestecho.img")
		var opts image.Options
		if opts, initrdErr = imagetest.Options(bin, initrdPath); initrdErr != nil {
			return
		}
		if !opts.NoModules {
			opts.Modules = []string{"virtio_pci", "virtio_mmio", "vmw_vsock_virtio_transport"}
		}
		_, initrdErr = image.BuildInitrd(opts)
	})
	if initrdErr != nil {
		t.Fatalf("build guest initrd: %v", initrdErr)
	}
	return initrdPath
}

type testVM struct {
	b       *vsock.Backend
	dir     string
	console string
}

// Machines the tests boot: the device name differs between PCI and MMIO.
var (
	q35     = machine{"q35", "vhost-user-vsock-pci"}
	microvm = machine{"microvm", "vhost-user-vsock-device"}
)

type machine struct{ name, device string }

// startVM boots the cloud kernel with guestecho as init on a fresh Backend
// and returns once the guest's echo port answers. Everything stops when
// the test ends.
func startVM(t testing.TB, m machine) *testVM {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root")
	}
	if _, err := os.Stat(qemuPath); err != nil {
		require.Missingf(t, "QEMU not installed at %s", qemuPath)
	}
	kernel := imagetest.Kernel(t)
	initrd := guestInitrd(t)
	dir, err := os.MkdirTemp("", "vmpod-vsock-vm-")
	if err != nil {
		t.Fatal(err)
	}
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	t.Cleanup(func() {
		os.RemoveAll(dir)
	})
	vm := &testVM{dir: dir, console: filepath.Join(dir, "console.log")}
	sock := filepath.Join(dir, "vsock.sock")
	b, err := vsock.NewBackend(sock, guestCID)
	if err != nil {
		t.Fatal(err)
	}
	vm.b = b
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx) }()

	appendLine := "console=ttyS0 panic=-1 quiet"
	var machineArgs []string
	if m == microvm {
		// Without a PIT to calibrate against, microvm guests stall at
		// "Marking TSC unstable" unless told the TSC frequency.
		appendLine += fmt.Sprintf(" tsc_early_khz=%d", hostTSCkHz())
		// Modern virtio-mmio, as hypervisor/qemu runs pods (QEMU 7.2's
		// default is legacy).
		machineArgs = []string{"-global", "virtio-mmio.force-legacy=false"}
	}
	cmd := exec.Command(qemuPath, append(machineArgs,
		"-machine", m.name+",accel=tcg,memory-backend=mem",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on",
		"-m", "256M", "-smp", "1", "-nographic", "-nodefaults", "-no-reboot",
		"-chardev", "file,id=con,path="+vm.console, "-serial", "chardev:con",
		"-kernel", kernel, "-initrd", initrd,
		"-append", appendLine,
		"-qmp", "unix:"+filepath.Join(dir, "qmp.sock")+",server=on,wait=off",
		"-chardev", "socket,id=vsock,path="+sock,
		"-device", m.device+",chardev=vsock",
	)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		cancel()
		b.Close()
		t.Fatalf("start QEMU: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("QEMU %d did not exit after SIGKILL", cmd.Process.Pid)
		}
		cancel()
		if err := b.Close(); err != nil {
			t.Errorf("close backend: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("backend Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("backend Serve did not return")
		}
		if t.Failed() {
			con, _ := os.ReadFile(vm.console)
			t.Logf("QEMU stderr:\n%s\nguest console:\n%s", stderr.String(), con)
		}
	})

	started := time.Now()
	deadline := started.Add(bootLimit)
	for {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := b.Dial(dctx, portEcho)
		dcancel()
		if err == nil {
			c.Close()
			t.Logf("guest answered %v after QEMU started", time.Since(started).Round(time.Millisecond))
			return vm
		}
		select {
		case <-exited:
			t.Fatalf("QEMU exited during boot: %s", stderr.String())
		case err := <-served:
			t.Fatalf("backend stopped during boot: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest echo port did not answer within %v: %v", bootLimit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (vm *testVM) dial(t testing.TB, port uint32) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := vm.b.Dial(ctx, port)
	if err != nil {
		t.Fatalf("dial guest port %d: %v", port, err)
	}
	return c
}

// readLine reads one short line from c.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var line []byte
	var b [1]byte
	for len(line) < 256 {
		if _, err := c.Read(b[:]); err != nil {
			t.Fatalf("read reply line after %q: %v", line, err)
		}
		if b[0] == '\n' {
			return string(line)
		}
		line = append(line, b[0])
	}
	t.Fatalf("reply line too long: %q", line)
	return ""
}

func expectLine(t testing.TB, c net.Conn, want string) {
	t.Helper()
	if got := readLine(t, c); got != want {
		t.Fatalf("guest replied %q, want %q", got, want)
	}
}

// hostTSCkHz estimates the host's TSC frequency from /proc/cpuinfo.
func hostTSCkHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	return 2000000
}

// qmp runs QMP commands on the test VM's monitor and fails the test on an
// error reply.
func (vm *testVM) qmp(t testing.TB, commands ...string) {
	t.Helper()
	c, err := net.DialTimeout("unix", filepath.Join(vm.dir, "qmp.sock"), 5*time.Second)
	if err != nil {
		t.Fatalf("connect to QMP: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	dec := json.NewDecoder(c)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		t.Fatalf("QMP greeting: %v", err)
	}
	for _, cmd := range append([]string{"qmp_capabilities"}, commands...) {
		fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd)
		for {
			var reply map[string]any
			if err := dec.Decode(&reply); err != nil {
				t.Fatalf("QMP %s: %v", cmd, err)
			}
			if e, ok := reply["error"]; ok {
				t.Fatalf("QMP %s: %v", cmd, e)
			}
			if _, ok := reply["return"]; ok {
				break
			}
			// An asynchronous event: keep reading.
		}
	}
}
