package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Run(m)) }

// Called as modprobe, the agent is the module helper and nothing else: it
// answers at once with the helper's status and message, never serving
// (which would not return) nor doing init's work. Loading itself needs the
// guest kernel: integration TestGuestModules.
func TestModprobeEntry(t *testing.T) {
	link := filepath.Join(t.TempDir(), "modprobe")
	if err := os.Symlink(testbin.Agent(t), link); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args   []string
		status int
		stderr string
	}{
		{[]string{"-q", "--", "vmpod-test-no-such-module"}, 1, ""},
		{[]string{"vmpod-test-no-such-module"}, 1, "vmpod-test-no-such-module: not in the image's module index"},
		{[]string{"init"}, 1, "init: not in the image's module index"}, // not libcontainer's init
		{[]string{"-r", "bridge"}, 2, "usage: modprobe"},
		{nil, 2, "usage: modprobe"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, link, c.args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != c.status {
			t.Errorf("modprobe %q: %v, want exit status %d", c.args, err, c.status)
		}
		if c.stderr == "" && stderr.Len() != 0 || !strings.Contains(stderr.String(), c.stderr) {
			t.Errorf("modprobe %q wrote %q, want %q", c.args, stderr.String(), c.stderr)
		}
	}
}
