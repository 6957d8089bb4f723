package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExecErrors: what `vmpod exec` says before it reaches any guest. The
// real console is tested with a VM in integration/debugexec_test.go.
func TestExecErrors(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "nodebug"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--state-root", root, "missing", "--", "true"}, exitFail, "sandbox missing not found under " + root},
		{[]string{"--state-root", root, "nodebug", "--", "true"}, exitFail, "debug console is off for sandbox nodebug: set [runtime] debug_console = true"},
		{[]string{"--state-root", root, "..", "--", "true"}, exitUsage, `bad sandbox id ".."`},
		{[]string{"--state-root", root, "a/b", "--", "true"}, exitUsage, `bad sandbox id "a/b"`},
		{[]string{"--state-root", root, "nodebug", "--"}, exitUsage, "want a sandbox id and a command"},
		{[]string{"--state-root", root, "--timeout", "11m", "nodebug", "--", "true"}, exitUsage, "--timeout 11m0s"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"exec"}, c.args...), &stdout, &stderr)
		if code != c.code || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("vmpod exec %q: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr.String(), c.code, c.want)
		}
	}
}
