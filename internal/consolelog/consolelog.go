// Package consolelog is the format of the agent's log lines on the guest
// console, shared by the agent, which writes them, and the shim, which
// reads the console: lines the agent marks as warnings or errors, and the
// guest kernel's panics and oopses, reach the shim's log at warn or error
// level, while the rest of the console stays at debug.
package consolelog

import (
	"strings"

	"github.com/sirupsen/logrus"
)

// Prefix starts every line the agent logs. The guest console is written by
// the kernel and the agent only (containers' stdio goes elsewhere), so a
// line with this prefix is the agent's.
const Prefix = "vmpod-agent "

// MaxLine bounds one agent log line, newline included; the formatter cuts
// longer lines so that a huge error message does not flood the host log.
const MaxLine = 2048

// Formatter writes agent log entries as Prefix + logfmt without colours or
// time (the shim's log line has the host's time): `vmpod-agent
// level=warning msg="..." key=value`.
type Formatter struct {
	text logrus.TextFormatter
}

// NewFormatter returns the agent's console formatter.
func NewFormatter() *Formatter {
	return &Formatter{text: logrus.TextFormatter{DisableColors: true, DisableTimestamp: true}}
}

// Format implements logrus.Formatter.
func (f *Formatter) Format(e *logrus.Entry) ([]byte, error) {
	b, err := f.text.Format(e)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(Prefix)+len(b))
	out = append(out, Prefix...)
	out = append(out, b...)
	if len(out) > MaxLine {
		out = append(out[:MaxLine-len(" [truncated]\n")], " [truncated]\n"...)
	}
	return out, nil
}

// kernelErrors and kernelWarnings are the guest kernel's messages an
// operator must see: the VM (or a process in it) died or is about to.
var (
	kernelErrors = []string{
		"Kernel panic - not syncing",
		"Oops:",
		"BUG: ",
		"general protection fault",
		"Unable to handle kernel",
	}
	kernelWarnings = []string{
		"WARNING: CPU:",
		"Out of memory: Killed process",
		"invoked oom-killer",
		"Memory cgroup out of memory",
		"segfault at ",
	}
)

// Level is the level the shim logs a console line at: the agent's own
// level for its warnings and errors, error for kernel panics and oopses,
// warn for kernel warnings and OOM kills, debug for everything else.
func Level(line string) logrus.Level {
	if rest, ok := strings.CutPrefix(line, Prefix); ok {
		rest, ok = strings.CutPrefix(rest, "level=")
		if !ok {
			return logrus.DebugLevel
		}
		lvl, _, _ := strings.Cut(rest, " ")
		switch lvl {
		case "warning":
			return logrus.WarnLevel
		case "error", "fatal", "panic":
			return logrus.ErrorLevel
		}
		return logrus.DebugLevel
	}
	for _, k := range kernelErrors {
		if strings.Contains(line, k) {
			return logrus.ErrorLevel
		}
	}
	for _, k := range kernelWarnings {
		if strings.Contains(line, k) {
			return logrus.WarnLevel
		}
	}
	return logrus.DebugLevel
}
