package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/vsock"
)

const (
	// defaultStateRoot is the shim's state root (shim.StateRoot), which
	// $VMPOD_STATE_ROOT overrides as it does for the shim.
	defaultStateRoot = "/run/vmpod/sandboxes"
	stateRootEnv     = "VMPOD_STATE_ROOT"
	// debugSocketName is shim.DebugSocketName, in a sandbox's directory.
	debugSocketName = "debug.sock"
	// agentPort is vm.AgentPort: the only port the debug socket offers.
	agentPort = 1024
	// execSlack is how much longer than the command's timeout `vmpod exec`
	// waits, for the dial and the reply.
	execSlack = 15 * time.Second
)

// sandboxIDPattern is containerd's identifier syntax: no path separators,
// never "." or "..".
var sandboxIDPattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// execCmd is `vmpod exec [flags] <sandbox-id> -- CMD...`: it runs CMD in
// the sandbox's guest, outside any container, through the debug console,
// prints its output and exits with its exit code.
func execCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("exec", stderr)
	root := fs.String("state-root", "", "the shim's state root (default $"+stateRootEnv+", then "+defaultStateRoot+")")
	timeout := fs.Duration("timeout", 30*time.Second, "kill the command after this long (at most 10m)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) >= 2 && rest[1] == "--" {
		rest = append(rest[:1:1], rest[2:]...)
	}
	if len(rest) < 2 {
		fmt.Fprintf(stderr, "vmpod exec: want a sandbox id and a command: vmpod exec <sandbox-id> -- CMD...\n%s", usage)
		return exitUsage
	}
	id, command := rest[0], rest[1:]
	if !sandboxIDPattern.MatchString(id) || len(id) > 128 {
		fmt.Fprintf(stderr, "vmpod exec: bad sandbox id %q: want letters and digits joined by '.', '_' or '-'\n", id)
		return exitUsage
	}
	if *timeout <= 0 || *timeout > 10*time.Minute {
		fmt.Fprintf(stderr, "vmpod exec: --timeout %v: want more than 0 and at most 10m\n", *timeout)
		return exitUsage
	}
	resp, err := debugExec(ctx, resolveStateRoot(*root), id, command, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "vmpod exec:", err)
		return exitFail
	}
	stdout.Write(resp.GetStdout())
	stderr.Write(resp.GetStderr())
	if resp.GetTruncated() {
		fmt.Fprintln(stderr, "vmpod exec: output truncated by the agent (1 MiB per stream)")
	}
	code := resp.GetExitCode()
	if code < 0 || code > 255 {
		fmt.Fprintf(stderr, "vmpod exec: the guest reported exit code %d\n", code)
		return exitFail
	}
	return int(code)
}

// debugExec finds sandbox id's debug socket under root and runs command
// through it.
func debugExec(ctx context.Context, root, id string, command []string, timeout time.Duration) (*agentpb.DebugExecResponse, error) {
	dir := filepath.Join(root, id)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("sandbox %s not found under %s", id, root)
		}
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	sock := filepath.Join(dir, debugSocketName)
	if _, err := os.Stat(sock); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("debug console is off for sandbox %s: set [runtime] debug_console = true (no %s)", id, sock)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+execSlack)
	defer cancel()
	conn, err := vsock.DialHybrid(ctx, sock, agentPort)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	resp, err := agentpb.NewAgentClient(client).DebugExec(ctx, &agentpb.DebugExecRequest{
		Args:      command,
		TimeoutMs: timeout.Milliseconds(),
	})
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			return nil, fmt.Errorf("sandbox %s: %s", id, s.Message())
		}
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	return resp, nil
}
