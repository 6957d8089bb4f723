// Package testbin builds the project's binaries once per test process, the
// way the Makefile builds them, so that tests run the real programs.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// agentTags are the build tags of static builds, the agent's: "seccomp"
// links libseccomp so that the agent applies OCI seccomp profiles. Keep
// them in step with AGENT_TAGS in the Makefile.
const agentTags = "netgo,osusergo,seccomp"

var (
	mu    sync.Mutex
	built = map[string]string{}
	dir   string
)

// ModuleRoot is the repository's top directory.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Agent returns the path of a static vmpod-agent, built for this test run.
func Agent(t testing.TB) string {
	return Build(t, "./cmd/vmpod-agent", true)
}

// Build compiles the main package pkg (relative to the module root) and
// returns the binary's path. Static builds use the agent's flags: cgo for
// libcontainer's nsenter, linked statically for the initrd.
func Build(t testing.TB, pkg string, static bool) string {
	t.Helper()
	path, err := build(pkg, static)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func build(pkg string, static bool) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	key := fmt.Sprintf("%s/%v", pkg, static)
	if p, ok := built[key]; ok {
		return p, nil
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "vmpod-testbin-")
		if err != nil {
			return "", err
		}
		dir = d
	}
	out := filepath.Join(dir, fmt.Sprintf("%s-%d", filepath.Base(pkg), len(built)))
	args := []string{"build", "-o", out}
	env := os.Environ()
	if static {
		args = append(args, "-tags", agentTags, "-ldflags", "-s -w -extldflags -static")
		env = append(env, "CGO_ENABLED=1")
	}
	args = append(args, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = ModuleRoot()
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	built[key] = out
	return out, nil
}

// Run runs a package's tests and removes the binaries they built; TestMain
// calls it: os.Exit(testbin.Run(m)).
func Run(m *testing.M) int {
	code := m.Run()
	Cleanup()
	return code
}

// Cleanup removes the built binaries.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
		dir = ""
		built = map[string]string{}
	}
}
