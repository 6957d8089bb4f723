// Package imagetest builds guest images for tests: the installed cloud
// kernel with an initrd around the real agent or around a trivial init.
package imagetest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

// QEMUPath is the QEMU the tests boot.
const QEMUPath = "/usr/bin/qemu-system-x86_64"

// Require skips t unless it runs as root with QEMU and a cloud kernel.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root (virtiofsd, mounts, vhost-user sockets)")
	}
	if _, err := exec.LookPath(QEMUPath); err != nil {
		require.Missingf(t, "QEMU not installed at %s", QEMUPath)
	}
	if _, err := image.FindKernel(""); err != nil {
		require.Missing(t, err)
	}
}

var (
	mu     sync.Mutex
	images = map[string]string{}
	dir    string
)

// Kernel returns the cloud kernel's path.
func Kernel(t testing.TB) string {
	t.Helper()
	k, err := image.FindKernel("")
	if err != nil {
		require.Missing(t, err)
	}
	return k
}

// Vmlinux returns the cloud kernel's uncompressed ELF, as `make image`
// writes it, extracted once per test process.
func Vmlinux(t testing.TB) string {
	t.Helper()
	kernel := Kernel(t)
	mu.Lock()
	defer mu.Unlock()
	if p, ok := images["vmlinux"]; ok {
		return p
	}
	if err := ensureDir(); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "vmlinux")
	if err := image.ExtractVmlinux(kernel, out); err != nil {
		if errors.Is(err, image.ErrNoPVH) {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	images["vmlinux"] = out
	return out
}

func ensureDir() error {
	if dir != "" {
		return nil
	}
	d, err := os.MkdirTemp("", "vmpod-imagetest-")
	if err != nil {
		return err
	}
	dir = d
	return nil
}

// TestInitInitrd returns an initrd whose /init is image/internal/testinit:
// it powers off at once, or sleeps with vmpod_testinit=sleep on the kernel
// command line.
func TestInitInitrd(t testing.TB) string {
	return initrd(t, "testinit", "./image/internal/testinit")
}

// AgentInitrd returns an initrd whose /init is the real vmpod-agent.
func AgentInitrd(t testing.TB) string {
	return initrd(t, "agent", "./cmd/vmpod-agent")
}

// initrd builds (once per test process) an initrd around the static build
// of pkg. Call Cleanup from TestMain.
func initrd(t testing.TB, name, pkg string) string {
	t.Helper()
	bin := testbin.Build(t, pkg, true)
	mu.Lock()
	defer mu.Unlock()
	if p, ok := images[name]; ok {
		return p
	}
	if err := ensureDir(); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".img")
	if _, err := image.BuildInitrd(image.Options{Init: bin, Output: out}); err != nil {
		t.Fatal(err)
	}
	images[name] = out
	return out
}

// Cleanup removes the built images and binaries.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
		dir = ""
		images = map[string]string{}
	}
	testbin.Cleanup()
}
