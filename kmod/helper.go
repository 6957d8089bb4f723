package kmod

import (
	"errors"
	"fmt"
	"io"
)

// Exit statuses of Helper.
const (
	HelperOK     = 0
	HelperFailed = 1
	HelperUsage  = 2
)

// HelperArgs parses the arguments of the modprobe helper (after argv[0]):
// the kernel runs it as `modprobe -q -- <name>`; a person may run
// `modprobe <name>`. Anything else is a usage error: this is not a full
// modprobe.
func HelperArgs(args []string) (name string, quiet bool, err error) {
	switch {
	case len(args) == 3 && args[0] == "-q" && args[1] == "--":
		name, quiet = args[2], true
	case len(args) == 1 && args[0] != "" && args[0][0] != '-':
		name = args[0]
	default:
		return "", false, fmt.Errorf("usage: modprobe [-q --] <module-or-alias> (got %q)", args)
	}
	return name, quiet, CheckName(name)
}

// Helper is the kernel's module helper: it loads the module args name,
// found in the index in indexDir, from the modules tree modDir, reports
// a failure on stderr and returns the exit status. As with modprobe -q, a
// name the image has no module for fails quietly: the kernel asks for
// many (netdev-<name> for every unknown device, say).
func Helper(args []string, indexDir, modDir string, stderr io.Writer) int {
	name, quiet, err := HelperArgs(args)
	if err != nil {
		fmt.Fprintln(stderr, "modprobe:", err)
		return HelperUsage
	}
	if err := LoadByName(indexDir, modDir, name); err != nil {
		if !quiet || !errors.Is(err, ErrNotInIndex) {
			fmt.Fprintln(stderr, "modprobe:", err)
		}
		return HelperFailed
	}
	return HelperOK
}
