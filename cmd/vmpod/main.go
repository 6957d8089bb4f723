// Command vmpod is vmpod's operator tool: `vmpod check` says whether this
// host can run vmpod's VMs and how, `vmpod env` prints the effective
// configuration and where each value came from, `vmpod version` prints the
// versions a bug report needs, `vmpod exec` runs a command in a sandbox's
// guest for debugging, `vmpod metrics` prints a sandbox's metrics and
// `vmpod monitor` serves every sandbox's on one HTTP endpoint.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/configenv"
	"github.com/vmpod/vmpod/hostcheck"
	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/version"
)

// Exit codes: 1 when vmpod cannot run here (or a command failed), 2 for a
// usage error.
const (
	exitFail  = 1
	exitUsage = 2
)

// checkTimeout bounds a whole `vmpod check`.
const checkTimeout = time.Minute

const usage = `usage: vmpod <command> [flags]

Commands:
  check     check that this host can run vmpod VMs; exit 1 if it cannot
  env       print the effective configuration, each key with its source
  version   print vmpod's version, the Go version and the agent protocol
  exec      run a command in a sandbox's guest, outside any container:
            vmpod exec [flags] <sandbox-id> -- CMD... (needs [runtime]
            debug_console = true; exits with the command's exit code)
  metrics   print a sandbox's Prometheus metrics: vmpod metrics <sandbox-id>
  monitor   serve every sandbox's metrics on one HTTP endpoint, each sample
            labelled with sandbox_id (and pod_name, pod_namespace):
            vmpod monitor --listen ADDR
  help      print this text

Flags of check and env:
  --config PATH             configuration file (default: $VMPOD_CONFIG, then
                            /etc/vmpod/configuration.toml, then the built-in
                            defaults)
Flags of check:
  --containerd-config PATH  containerd's configuration file
                            (default /etc/containerd/config.toml)
Flags of exec, metrics and monitor:
  --state-root DIR          the shim's state root (default $VMPOD_STATE_ROOT,
                            then /run/vmpod/sandboxes)
Flags of monitor:
  --listen ADDR             where to serve /metrics (host:port), required
  --sandbox-timeout DURATION
                            bound on each sandbox's scrape (default 5s)
Flags of exec:
  --timeout DURATION        kill the command after this long (default 30s,
                            at most 10m)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "check":
		return check(ctx, args[1:], stdout, stderr)
	case "env":
		return env(args[1:], stdout, stderr)
	case "version":
		return printVersion(args[1:], stdout, stderr)
	case "exec":
		return execCmd(ctx, args[1:], stdout, stderr)
	case "metrics":
		return metricsCmd(ctx, args[1:], stdout, stderr)
	case "monitor":
		return monitorCmd(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "vmpod: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

// newFlags is a flag set for cmd that reports errors (and -h) with the
// usage text instead of exiting.
func newFlags(cmd string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("vmpod "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	return fs
}

// parse parses args into fs and refuses positional arguments; it returns
// the exit code to use, or -1 to go on.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n%s", fs.Name(), fs.Arg(0), usage)
		return exitUsage
	}
	return -1
}

func check(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check", stderr)
	var opts hostcheck.Options
	fs.StringVar(&opts.ConfigPath, "config", "", "configuration file")
	fs.StringVar(&opts.ContainerdConfig, "containerd-config", hostcheck.DefaultContainerdConfig, "containerd's configuration file")
	if code := parse(fs, args, stderr); code >= 0 {
		return code
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	rs := hostcheck.Run(ctx, opts)
	if err := hostcheck.Write(stdout, rs); err != nil {
		fmt.Fprintf(stderr, "vmpod check: %v\n", err)
		return exitFail
	}
	if hostcheck.Failed(rs) {
		return exitFail
	}
	return 0
}

func env(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("env", stderr)
	path := fs.String("config", "", "configuration file")
	if code := parse(fs, args, stderr); code >= 0 {
		return code
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "vmpod env: %v\n", err)
		return exitFail
	}
	if err := configenv.Write(stdout, cfg); err != nil {
		fmt.Fprintf(stderr, "vmpod env: %v\n", err)
		return exitFail
	}
	return 0
}

func printVersion(args []string, stdout, stderr io.Writer) int {
	if code := parse(newFlags("version", stderr), args, stderr); code >= 0 {
		return code
	}
	// The protocol's name comes from the compiled descriptor, so it cannot
	// drift from what the shim and the agent speak.
	fmt.Fprintf(stdout, "vmpod %s\ngo %s %s/%s\nagent protocol %s\n",
		version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH, agentpb.File_agent_proto.Package())
	return 0
}
