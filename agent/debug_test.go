package agent

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	agentpb "github.com/vmpod/vmpod/proto"
)

func newDebugServer(t *testing.T, on bool) *Server {
	t.Helper()
	s, err := New(Config{StateDir: t.TempDir(), DebugConsole: on})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func debugExec(t *testing.T, s *Server, req *agentpb.DebugExecRequest) *agentpb.DebugExecResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), MaxDebugTimeout)
	defer cancel()
	resp, err := s.DebugExec(ctx, req)
	if err != nil {
		t.Fatalf("DebugExec %q: %v", req.GetArgs(), err)
	}
	return resp
}

func TestDebugExecOutputAndExitCode(t *testing.T) {
	s := newDebugServer(t, true)
	resp := debugExec(t, s, &agentpb.DebugExecRequest{
		Args: []string{"sh", "-c", `echo out "$FOO"; echo err >&2; exit 3`},
		Env:  []string{"FOO=bar"},
	})
	if got := string(resp.GetStdout()); got != "out bar\n" {
		t.Errorf("stdout %q, want %q", got, "out bar\n")
	}
	if got := string(resp.GetStderr()); got != "err\n" {
		t.Errorf("stderr %q, want %q", got, "err\n")
	}
	if resp.GetExitCode() != 3 || resp.GetTruncated() {
		t.Errorf("exit code %d truncated %v, want 3 false", resp.GetExitCode(), resp.GetTruncated())
	}
}

func TestDebugExecTruncates(t *testing.T) {
	s := newDebugServer(t, true)
	resp := debugExec(t, s, &agentpb.DebugExecRequest{
		Args: []string{"sh", "-c", "head -c 3000000 /dev/zero"},
	})
	if len(resp.GetStdout()) != DebugOutputLimit || !resp.GetTruncated() {
		t.Errorf("stdout of %d bytes truncated %v, want %d true", len(resp.GetStdout()), resp.GetTruncated(), DebugOutputLimit)
	}
	if !bytes.Equal(resp.GetStdout(), make([]byte, DebugOutputLimit)) {
		t.Error("stdout is not the first bytes written")
	}
	if resp.GetExitCode() != 0 {
		t.Errorf("exit code %d, want 0: dropping output must not fail the writer", resp.GetExitCode())
	}
}

// A command past its timeout is killed with what it started (the sleep
// holds the output pipe: without the group kill Wait would hang).
func TestDebugExecTimeout(t *testing.T) {
	s := newDebugServer(t, true)
	resp := debugExec(t, s, &agentpb.DebugExecRequest{
		Args:      []string{"sh", "-c", "echo started; sleep 60 & wait"},
		TimeoutMs: 300,
	})
	if resp.GetExitCode() != 128+9 {
		t.Errorf("exit code %d, want 137 (SIGKILL)", resp.GetExitCode())
	}
	if string(resp.GetStdout()) != "started\n" {
		t.Errorf("stdout %q, want the output before the kill", resp.GetStdout())
	}
}

func TestDebugExecRefused(t *testing.T) {
	_, err := newDebugServer(t, false).DebugExec(context.Background(), &agentpb.DebugExecRequest{Args: []string{"true"}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "debug_console = true") {
		t.Errorf("disabled console: got %v, want FailedPrecondition naming debug_console", err)
	}

	s := newDebugServer(t, true)
	for name, req := range map[string]*agentpb.DebugExecRequest{
		"no args":       {},
		"empty command": {Args: []string{""}},
		"NUL":           {Args: []string{"echo", "a\x00b"}},
		"long arg":      {Args: []string{"echo", strings.Repeat("a", maxStringLen+1)}},
		"many args":     {Args: make([]string, maxDebugArgs+1)},
		"env no =":      {Args: []string{"true"}, Env: []string{"FOO"}},
		"env empty key": {Args: []string{"true"}, Env: []string{"=x"}},
		"negative time": {Args: []string{"true"}, TimeoutMs: -1},
		"too long time": {Args: []string{"true"}, TimeoutMs: int64(MaxDebugTimeout.Milliseconds()) + 1},
	} {
		if _, err := s.DebugExec(context.Background(), req); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	if _, err := s.DebugExec(context.Background(), &agentpb.DebugExecRequest{Args: []string{"/nonexistent"}}); err == nil || !strings.Contains(err.Error(), "/nonexistent") {
		t.Errorf("missing command: got %v, want an error naming it", err)
	}
}
