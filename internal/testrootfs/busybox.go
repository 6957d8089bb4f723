// Package testrootfs builds small root filesystems for tests and debug
// images from Debian's busybox-static, so that no registry is needed.
package testrootfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/internal/require"
)

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// ErrNoBusybox means the static busybox binary is not installed.
var ErrNoBusybox = errors.New("static busybox not found at " + BusyboxPath + " (apt-get install busybox-static)")

// Users are the accounts written to /etc/passwd, so tests can run as a
// non-root user by name or number.
const passwd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
`

const group = `root:x:0:
daemon:x:1:
user:x:1000:
nogroup:x:65534:
`

// Busybox writes a minimal root filesystem into dir: a static busybox with
// a symlink per applet, /etc/passwd and /etc/group, and the empty
// directories a container runtime mounts over.
func Busybox(dir string) error {
	if err := checkStatic(BusyboxPath); err != nil {
		return err
	}
	for _, d := range []string{"bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user", "run", "var", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.Chown(filepath.Join(dir, "home/user"), 1000, 1000); err != nil && !errors.Is(err, os.ErrPermission) {
		return err
	}
	if err := copyFile(BusyboxPath, filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		link := filepath.Join(dir, "bin", applet)
		if err := os.Symlink("busybox", link); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":      passwd,
		"etc/group":       group,
		"etc/hostname":    "busybox\n",
		"etc/hosts":       "127.0.0.1 localhost\n",
		"etc/resolv.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ForTest builds a busybox root filesystem in a fresh temporary directory,
// or skips the test with the reason when busybox-static is missing.
func ForTest(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := Busybox(dir); err != nil {
		if errors.Is(err, ErrNoBusybox) {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	return dir
}

func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return ErrNoBusybox
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: %w", path, ErrNoBusybox)
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
