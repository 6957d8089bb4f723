// Command pause is the sandbox (pause) container of the integration
// tests' CRI pods, like Kubernetes' pause: it holds the pod's namespaces,
// reaps the zombies of a shared PID namespace, and exits 0 on SIGTERM or
// SIGINT. It is built static and is the only file of the test pause image.
package main

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGCHLD)
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
