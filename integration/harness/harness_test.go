package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.RunVMs(m)) }

// TestRuncContainer proves the harness and the image: a private containerd
// runs busybox with the stock runc runtime and leaves nothing behind.
func TestRuncContainer(t *testing.T) {
	if _, err := os.Stat("/usr/bin/containerd-shim-runc-v2"); err != nil {
		require.Missingf(t, "needs containerd's runc shim: %v", err)
	}
	c := StartContainerd(t, Options{})
	ref := ImportBusybox(t, c)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, stderr, err := c.Ctr(ctx, "run", "--rm", "--runtime", "io.containerd.runc.v2", ref, "t1", "echo", "hello")
	if err != nil {
		t.Fatal(err)
	}
	if out != "hello\n" {
		t.Errorf("stdout = %q, want %q (stderr %q)", out, "hello\n", stderr)
	}

	// stdin reaches the container, and the image's files and users are
	// there. (head, not cat: ctr never closes the container's stdin.)
	out, _, err = c.CtrStdin(ctx, bytes.NewBufferString("from stdin\n"), "run", "--rm", ref, "t2", "sh", "-c", "head -n 1; id -u user; readlink /bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if want := "from stdin\n1000\nbusybox\n"; out != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
	c.AssertClean(t)
}

// TestAssertCleanSeesLeftovers checks the checker: a container left
// running is reported (on a recording testing.TB), and teardown removes it.
func TestAssertCleanSeesLeftovers(t *testing.T) {
	if _, err := os.Stat("/usr/bin/containerd-shim-runc-v2"); err != nil {
		require.Missingf(t, "needs containerd's runc shim: %v", err)
	}
	c := StartContainerd(t, Options{})
	ref := ImportBusybox(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, _, err := c.Ctr(ctx, "run", "--detach", ref, "left", "sleep", "600"); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{TB: t}
	c.AssertClean(rec)
	if len(rec.errors) == 0 {
		t.Error("AssertClean reported nothing for a running container")
	}
	for _, e := range rec.errors {
		t.Logf("reported as expected: %s", e)
	}
	// The teardown registered by StartContainerd kills and deletes it; the
	// leak check registered there verifies that.
}

type recorder struct {
	testing.TB
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Helper() {}

// TestCRIPlugin checks that the CRI configuration the harness writes (kata
// handler, restrict_oom_score_adj) loads on the selected containerd: the
// plugins report ok and the daemon knows every key.
func TestCRIPlugin(t *testing.T) {
	c := StartContainerd(t, Options{CRI: true, SandboxImage: "registry.k8s.io/pause:3.9", KataConfigPath: "/nonexistent/configuration.toml"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _, err := c.Ctr(ctx, "plugins", "list")
	if err != nil {
		t.Fatal(err)
	}
	// containerd 2.x splits CRI into three plugins; each must load.
	want := [][2]string{{"io.containerd.grpc.v1", "cri"}}
	if c.Daemon.Major >= 2 {
		want = append(want, [2]string{"io.containerd.cri.v1", "runtime"}, [2]string{"io.containerd.cri.v1", "images"})
	}
	for _, w := range want {
		var line string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == w[0] && f[1] == w[1] {
				line = l
			}
		}
		if !strings.HasSuffix(strings.TrimSpace(line), "ok") {
			t.Errorf("%s %s plugin line = %q, want status ok; plugins:\n%s", w[0], w[1], line, out)
		}
	}
	// Every key the harness writes is one the daemon knows (2.x logs the
	// others and ignores them).
	for _, l := range strings.Split(c.Logs(), "\n") {
		if strings.Contains(l, "unknown key") {
			t.Errorf("%s: %s", c.Daemon, l)
		}
	}
	c.AssertClean(t)
}
