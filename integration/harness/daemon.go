package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmpod/vmpod/internal/testbin"
)

// The environment that selects the containerd the harness runs (the whole
// test process uses one):
//
//   - VMPOD_CONTAINERD_BIN=<dir>: containerd, ctr and containerd-shim-runc-v2
//     from <dir>, one build;
//   - VMPOD_CONTAINERD=2: the pinned containerd 2.x of scripts/containerd2.sh
//     (built from the Go module proxy on first use, then cached);
//   - neither, or VMPOD_CONTAINERD=1: the system's, found on PATH (Debian's
//     1.6).
const (
	EnvContainerd    = "VMPOD_CONTAINERD"
	EnvContainerdBin = "VMPOD_CONTAINERD_BIN"
)

// containerd2Script builds and caches the pinned containerd 2.x and prints
// its bin directory.
const containerd2Script = "scripts/containerd2.sh"

// buildTimeout bounds the first build of containerd 2.x (a few minutes on
// 2 cores).
const buildTimeout = 30 * time.Minute

// Daemon is one containerd build: its daemon, its ctr (a ctr speaks the
// API of its own release) and its version.
type Daemon struct {
	Containerd string // the daemon binary
	Ctr        string // the ctr of the same build
	// BinDir holds the build's containerd-shim-runc-v2; it goes on the
	// daemon's PATH, after the vmpod shim's directory. Empty for the
	// system's containerd, whose runc shim is on PATH already.
	BinDir  string
	Version string // as `containerd --version` prints it: "1.6.20~ds1", "v2.4.2"
	Major   int    // 1 or 2: which configuration format the daemon reads
}

func (d Daemon) String() string { return fmt.Sprintf("containerd %s (%s)", d.Version, d.Containerd) }

var selected struct {
	once sync.Once
	d    Daemon
	err  error
}

// SelectedDaemon returns the containerd that the environment selects (see
// EnvContainerd), resolved once per test process; selecting containerd 2.x
// builds it on first use.
func SelectedDaemon() (Daemon, error) {
	selected.once.Do(func() { selected.d, selected.err = selectDaemon() })
	return selected.d, selected.err
}

func selectDaemon() (Daemon, error) {
	dir := os.Getenv(EnvContainerdBin)
	switch v := os.Getenv(EnvContainerd); {
	case dir != "":
	case v == "" || v == "1":
		return systemDaemon()
	case v == "2":
		var err error
		if dir, err = buildContainerd2(); err != nil {
			return Daemon{}, err
		}
	default:
		return Daemon{}, fmt.Errorf("%s=%q: want 1 (the system's containerd) or 2 (%s's build)", EnvContainerd, v, containerd2Script)
	}
	d := Daemon{Containerd: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr"), BinDir: dir}
	for _, p := range []string{d.Containerd, d.Ctr, filepath.Join(dir, "containerd-shim-runc-v2")} {
		if _, err := os.Stat(p); err != nil {
			return Daemon{}, fmt.Errorf("containerd build in %s: %w", dir, err)
		}
	}
	return withVersion(d)
}

// systemDaemon is the containerd and ctr found on PATH.
func systemDaemon() (Daemon, error) {
	var d Daemon
	var err error
	if d.Containerd, err = exec.LookPath("containerd"); err != nil {
		return Daemon{}, fmt.Errorf("needs containerd (apt-get install containerd): %w", err)
	}
	if d.Ctr, err = exec.LookPath("ctr"); err != nil {
		return Daemon{}, fmt.Errorf("needs ctr (apt-get install containerd): %w", err)
	}
	return withVersion(d)
}

// buildContainerd2 runs scripts/containerd2.sh, which prints the bin
// directory (building it first if it is not cached). Its progress goes to
// the test's stderr.
func buildContainerd2() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	script := filepath.Join(testbin.ModuleRoot(), containerd2Script)
	cmd := exec.CommandContext(ctx, script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	dir := strings.TrimSpace(out.String())
	if dir == "" {
		return "", fmt.Errorf("%s printed no bin directory", script)
	}
	return dir, nil
}

// withVersion asks the daemon binary its version.
func withVersion(d Daemon) (Daemon, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.Containerd, "--version").Output()
	if err != nil {
		return Daemon{}, fmt.Errorf("%s --version: %w", d.Containerd, err)
	}
	d.Version, d.Major, err = parseVersion(string(out))
	if err != nil {
		return Daemon{}, fmt.Errorf("%s --version: %w", d.Containerd, err)
	}
	return d, nil
}

// parseVersion reads `containerd --version`: "containerd <module> <version>
// [<revision>]", the version with or without a "v".
func parseVersion(out string) (version string, major int, err error) {
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "containerd" {
		return "", 0, fmt.Errorf("unexpected output %q", strings.TrimSpace(out))
	}
	version = f[2]
	m, _, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	major, err = strconv.Atoi(m)
	if err != nil || major < 1 {
		return "", 0, fmt.Errorf("no major version in %q (output %q)", version, strings.TrimSpace(out))
	}
	return version, major, nil
}
