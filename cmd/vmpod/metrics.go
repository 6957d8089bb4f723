package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmpod/vmpod/metrics"
	"github.com/vmpod/vmpod/metrics/node"
)

// metricsTimeout bounds `vmpod metrics`: the shim bounds the guest's part
// of a scrape itself, more briefly.
const metricsTimeout = 15 * time.Second

// resolveStateRoot is the --state-root flag, else $VMPOD_STATE_ROOT, else
// the default.
func resolveStateRoot(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv(stateRootEnv); v != "" {
		return v
	}
	return defaultStateRoot
}

// metricsCmd is `vmpod metrics [--state-root DIR] <sandbox-id>`: it prints
// the sandbox's metrics in the Prometheus text format.
func metricsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("metrics", stderr)
	root := fs.String("state-root", "", "the shim's state root")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "vmpod metrics: want one sandbox id\n%s", usage)
		return exitUsage
	}
	id := fs.Arg(0)
	if !sandboxIDPattern.MatchString(id) || len(id) > 128 {
		fmt.Fprintf(stderr, "vmpod metrics: bad sandbox id %q: want letters and digits joined by '.', '_' or '-'\n", id)
		return exitUsage
	}
	dir := filepath.Join(resolveStateRoot(*root), id)
	if _, err := os.Stat(dir); err != nil {
		fmt.Fprintf(stderr, "vmpod metrics: sandbox %s not found under %s\n", id, filepath.Dir(dir))
		return exitFail
	}
	sock := filepath.Join(dir, metrics.SocketName)
	if _, err := os.Stat(sock); err != nil {
		fmt.Fprintf(stderr, "vmpod metrics: sandbox %s serves no metrics (no %s): is [runtime] enable_metrics off?\n", id, sock)
		return exitFail
	}
	ctx, cancel := context.WithTimeout(ctx, metricsTimeout)
	defer cancel()
	body, err := node.Scrape(ctx, sock)
	if err != nil {
		fmt.Fprintf(stderr, "vmpod metrics: sandbox %s: %v\n", id, err)
		return exitFail
	}
	stdout.Write(body)
	return 0
}

// monitorCmd is `vmpod monitor --listen ADDR [--state-root DIR]`: one HTTP
// endpoint, /metrics, with the metrics of every sandbox of the node.
func monitorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("monitor", stderr)
	listen := fs.String("listen", "", "address to serve /metrics on, e.g. 127.0.0.1:8090")
	root := fs.String("state-root", "", "the shim's state root")
	timeout := fs.Duration("sandbox-timeout", node.DefaultSandboxTimeout, "bound on each sandbox's scrape")
	if code := parse(fs, args, stderr); code >= 0 {
		return code
	}
	if *listen == "" {
		fmt.Fprintf(stderr, "vmpod monitor: --listen ADDR is required\n%s", usage)
		return exitUsage
	}
	if *timeout <= 0 || *timeout > time.Minute {
		fmt.Fprintf(stderr, "vmpod monitor: --sandbox-timeout %v: want more than 0 and at most 1m\n", *timeout)
		return exitUsage
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "vmpod monitor: %v\n", err)
		return exitFail
	}
	m := &node.Monitor{StateRoot: resolveStateRoot(*root), SandboxTimeout: *timeout}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: *timeout + 30*time.Second}
	fmt.Fprintf(stdout, "vmpod monitor: serving the sandboxes under %s on http://%s/metrics\n", m.StateRoot, ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		fmt.Fprintf(stderr, "vmpod monitor: %v\n", err)
		return exitFail
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return 0
}
