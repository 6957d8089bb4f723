package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/metrics"
)

// TestMetricsCommand: `vmpod metrics` prints what a sandbox's socket
// serves, and says clearly when there is none. The real shim is scraped in
// integration/metrics_test.go.
func TestMetricsCommand(t *testing.T) {
	root := t.TempDir()
	for _, id := range []string{"off", "on"} {
		if err := os.Mkdir(filepath.Join(root, id), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s := metrics.New("on", os.Getpid(), time.Second)
	s.Attach(metrics.Source{Size: func() (int, uint64) { return 3, 0 }})
	stop, err := metrics.ServeUnix(filepath.Join(root, "on", metrics.SocketName), s.Handler())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, c := range []struct {
		args        []string
		code        int
		out, errOut string
	}{
		{[]string{"--state-root", root, "on"}, 0, "vmpod_vm_vcpus 3", ""},
		{[]string{"--state-root", root, "off"}, exitFail, "", "sandbox off serves no metrics"},
		{[]string{"--state-root", root, "gone"}, exitFail, "", "sandbox gone not found under " + root},
		{[]string{"--state-root", root, "../x"}, exitUsage, "", `bad sandbox id "../x"`},
		{[]string{"--state-root", root}, exitUsage, "", "want one sandbox id"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"metrics"}, c.args...), &stdout, &stderr)
		if code != c.code || !strings.Contains(stdout.String(), c.out) || !strings.Contains(stderr.String(), c.errOut) {
			t.Errorf("vmpod metrics %q: exit %d, stdout %.200q, stderr %q; want exit %d, %q, %q", c.args, code, stdout.String(), stderr.String(), c.code, c.out, c.errOut)
		}
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"monitor"}, &bytes.Buffer{}, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "--listen ADDR is required") {
		t.Errorf("vmpod monitor without --listen: exit %d, %q", code, stderr.String())
	}
}
