package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/kmod"
)

// helperTimeout bounds the modprobe helper: the kernel, and the process
// whose system call asked for the module, wait until it exits.
const helperTimeout = 30 * time.Second

// isModprobe reports whether the kernel (or a person) ran this binary as
// the module helper, kmod.HelperPath, a symlink to /init in the image.
func isModprobe() bool { return filepath.Base(os.Args[0]) == filepath.Base(kmod.HelperPath) }

// modprobe loads the module args name and returns the exit status. It
// runs instead of the agent: no server, no PID 1 duties. Failures go to
// stderr or, when that is /dev/null (as for the kernel's helper), to the
// kernel log, which the guest console (the shim's debug log) shows.
func modprobe(args []string) int {
	stderr := io.Writer(os.Stderr)
	if stderrIsNull() {
		if kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
			defer kmsg.Close()
			stderr = kmsg
		}
	}
	timer := time.AfterFunc(helperTimeout, func() {
		fmt.Fprintf(stderr, "modprobe %q: timed out after %v\n", args, helperTimeout)
		os.Exit(kmod.HelperFailed)
	})
	defer timer.Stop()
	dir, err := kmod.ModulesDir()
	if err != nil {
		fmt.Fprintln(stderr, "modprobe:", err)
		return kmod.HelperFailed
	}
	return kmod.Helper(args, kmod.IndexDir, dir, stderr)
}

// stderrIsNull reports whether stderr is /dev/null (character device 1:3),
// where the kernel's helper runs with it (the Go runtime opens it there
// for a process started without descriptors 0-2).
func stderrIsNull() bool {
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		return true
	}
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(st.Rdev) == 1 && unix.Minor(st.Rdev) == 3
}
