// Package imagetest builds guest images for tests: the installed cloud
// kernel (or the kernel EnvKernel names, such as vmpod's own from make
// kernel) with an initrd around the real agent or around a trivial init.
package imagetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
)

// QEMUPath is the QEMU the tests boot.
const QEMUPath = "/usr/bin/qemu-system-x86_64"

// EnvKernel names a guest kernel file the tests boot instead of Debian's
// cloud kernel: `make test` sets it to vmpod's own (make kernel). A kernel
// without module support gets initrds without modules.
const EnvKernel = "VMPOD_TEST_KERNEL"

// GuestKernel returns the kernel the tests boot and whether it loads
// modules (whose initrd must then carry them): EnvKernel's, checked with
// kernelcheck, or else the newest installed cloud kernel.
func GuestKernel() (path string, modules bool, err error) {
	if k := os.Getenv(EnvKernel); k != "" {
		r, err := kernelcheck.Check(k)
		if err != nil {
			return "", false, fmt.Errorf("$%s: %w", EnvKernel, err)
		}
		if r.ConfigFrom == "" {
			return "", false, fmt.Errorf("$%s: kernel %s: no configuration next to it (%s) or in it: cannot tell whether it loads modules", EnvKernel, k, kernelcheck.ConfigSuffix)
		}
		return k, r.Modules, nil
	}
	k, err := image.FindKernel("")
	return k, true, err
}

// Options returns the image.Options of an initrd with init as /init for
// the test kernel: NoModules when it has no module support, else the
// default modules.
func Options(init, out string) (image.Options, error) {
	_, modules, err := GuestKernel()
	if err != nil {
		return image.Options{}, err
	}
	return image.Options{Init: init, Output: out, NoModules: !modules}, nil
}

// Require skips t unless it runs as root with QEMU and a cloud kernel.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root (virtiofsd, mounts, vhost-user sockets)")
	}
	if _, err := exec.LookPath(QEMUPath); err != nil {
		require.Missingf(t, "QEMU not installed at %s", QEMUPath)
	}
	if os.Getenv(EnvKernel) != "" {
		if _, _, err := GuestKernel(); err != nil {
			t.Fatal(err) // asked for explicitly: not a missing requirement
		}
		return
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

// Kernel returns the test kernel's path (GuestKernel).
func Kernel(t testing.TB) string {
	t.Helper()
	k, _, err := GuestKernel()
	if err != nil {
		if os.Getenv(EnvKernel) != "" {
			t.Fatal(err)
		}
		require.Missing(t, err)
	}
	return k
}

// Vmlinux returns the test kernel's uncompressed ELF, as `make image`
// writes it: EnvKernel's when it is one, else the cloud kernel's,
// extracted once per test process.
func Vmlinux(t testing.TB) string {
	t.Helper()
	kernel := Kernel(t)
	if os.Getenv(EnvKernel) != "" {
		if isELF(kernel) {
			return kernel
		}
		t.Fatalf("$%s: %s is not an ELF vmlinux", EnvKernel, kernel)
	}
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
	opts, err := Options(bin, out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.BuildInitrd(opts); err != nil {
		t.Fatal(err)
	}
	images[name] = out
	return out
}

// Release returns the release (uname -r) of the test kernel: read from the
// banner of EnvKernel's image ("Linux version <release> "), else the
// installed cloud kernel's.
func Release(t testing.TB) string {
	t.Helper()
	k := os.Getenv(EnvKernel)
	if k == "" {
		rel, err := image.DefaultRelease()
		if err != nil {
			require.Missing(t, err)
		}
		return rel
	}
	raw, err := os.ReadFile(k)
	if err != nil {
		t.Fatal(err)
	}
	const banner = "Linux version "
	i := bytes.Index(raw, []byte(banner))
	if i < 0 {
		t.Fatalf("$%s: no %q banner in %s (a compressed image?)", EnvKernel, banner, k)
	}
	rest := raw[i+len(banner):]
	end := bytes.IndexByte(rest, ' ')
	if end <= 0 || end > 64 {
		t.Fatalf("$%s: malformed banner in %s", EnvKernel, k)
	}
	return string(rest[:end])
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 4)
	_, err = io.ReadFull(f, head)
	return err == nil && string(head) == "\x7fELF"
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
