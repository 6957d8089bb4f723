// Command vmpod-agent is the guest agent: PID 1 of a vmpod VM, serving the
// Agent API on vsock port 1024 (CRI port-forwards on 1025, process stdio
// streams on 1026). Run as "vmpod-agent init" it is
// libcontainer's container init instead, and run as "modprobe" (the
// image's /sbin/modprobe) the kernel's module helper.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/containerd/log"
	"github.com/mdlayher/vsock"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter" // runs before the Go runtime in "init"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/agent"
	"github.com/vmpod/vmpod/agent/pid1"
	"github.com/vmpod/vmpod/internal/consolelog"
	"github.com/vmpod/vmpod/portfwd"
	"github.com/vmpod/vmpod/stdiostream"
)

func init() {
	// libcontainer re-executes this binary as "init" for every container
	// process; nsenter's constructor has already set up the namespaces.
	if len(os.Args) > 1 && os.Args[1] == "init" && !isModprobe() {
		libcontainer.Init()
	}
}

func main() {
	if isModprobe() {
		os.Exit(modprobe(os.Args[1:]))
	}
	listen := flag.String("listen", "vsock://1024", "where to serve: vsock://PORT or unix:///PATH")
	stateDir := flag.String("state-dir", "/run/vmpod-agent", "libcontainer state root")
	level := flag.String("log-level", "info", "log level")
	debugConsole := flag.Bool("debug-console", false, "serve DebugExec: commands in the guest outside any container")
	stdioListen := flag.String("stdio-listen", "", "where to serve process stdio streams: vsock://PORT or unix:///PATH (default vsock://1026 as the guest's PID 1, none otherwise)")
	flag.Parse()

	ctx := context.Background()
	// The shim raises the agent's warnings and errors out of the console's
	// debug lines by this format.
	log.L.Logger.SetFormatter(consolelog.NewFormatter())
	if err := log.SetLevel(*level); err != nil {
		fmt.Fprintln(os.Stderr, "vmpod-agent:", err)
		os.Exit(2)
	}
	err := run(ctx, *listen, *stdioListen, *stateDir, *debugConsole)
	if pid1.IsInit() {
		log.G(ctx).WithError(err).Error("agent stopped; powering off")
		pid1.PowerOff(ctx)
	}
	if err != nil {
		log.G(ctx).WithError(err).Error("vmpod-agent")
		os.Exit(1)
	}
}

func run(ctx context.Context, listen, stdioListen, stateDir string, debugConsole bool) error {
	guest := pid1.IsInit()
	if guest {
		if err := pid1.Setup(ctx); err != nil {
			return err
		}
	}
	l, err := listener(listen)
	if err != nil {
		return err
	}
	defer l.Close()
	srv, err := agent.New(agent.Config{
		StateDir:     stateDir,
		Guest:        guest,
		NoPivotRoot:  guest && pid1.RootIsInitramfs(),
		DebugConsole: debugConsole,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
	defer stop()
	if guest {
		// CRI port-forwards arrive on a port of their own, one vsock
		// stream each (package portfwd); the agent API is unaffected
		// should it fail.
		pl, err := vsock.Listen(portfwd.VsockPort, nil)
		if err != nil {
			log.G(ctx).WithError(err).Error("port-forward: listen; no port-forwards into this pod")
		} else {
			go func() {
				if err := portfwd.Serve(ctx, pl); err != nil {
					log.G(ctx).WithError(err).Error("port-forward stopped")
				}
			}()
		}
	}
	if stdioListen == "" && guest {
		stdioListen = fmt.Sprintf("vsock://%d", stdiostream.VsockPort)
	}
	if stdioListen != "" {
		// Without it processes still run, but their output is discarded
		// (agent.AttachTimeout): an error the shim reports per stream.
		sl, err := listener(stdioListen)
		if err != nil {
			log.G(ctx).WithError(err).Error("stdio streams: listen; no process stdio in this pod")
		} else {
			go func() {
				if err := srv.ServeStdio(ctx, sl); err != nil {
					log.G(ctx).WithError(err).Error("stdio streams stopped")
				}
			}()
		}
	}
	log.G(ctx).WithField("listen", listen).Info("vmpod-agent serving")
	return srv.Serve(ctx, l)
}

func listener(addr string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(addr, "vsock://"):
		port, err := strconv.ParseUint(strings.TrimPrefix(addr, "vsock://"), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: bad port: %w", addr, err)
		}
		return vsock.Listen(uint32(port), nil)
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return net.Listen("unix", path)
	}
	return nil, fmt.Errorf("listen address %q: want vsock://PORT or unix:///PATH", addr)
}
