package consolelog

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestFormatterLevelRoundTrip(t *testing.T) {
	logger := logrus.New()
	var buf bytes.Buffer
	logger.SetOutput(&buf)
	logger.SetFormatter(NewFormatter())
	for _, tc := range []struct {
		log  func(e *logrus.Entry)
		want logrus.Level
	}{
		{func(e *logrus.Entry) { e.Info("vmpod-agent serving") }, logrus.DebugLevel},
		{func(e *logrus.Entry) { e.Warn("request failed") }, logrus.WarnLevel},
		{func(e *logrus.Entry) { e.Error("start container: exec failed") }, logrus.ErrorLevel},
	} {
		buf.Reset()
		tc.log(logrus.NewEntry(logger).WithField("id", "c1"))
		line := strings.TrimSuffix(buf.String(), "\n")
		if !strings.HasPrefix(line, Prefix+"level=") {
			t.Errorf("line %q does not start with %q", line, Prefix+"level=")
		}
		if got := Level(line); got != tc.want {
			t.Errorf("Level(%q) = %v, want %v", line, got, tc.want)
		}
	}
}

func TestFormatterBoundsLines(t *testing.T) {
	logger := logrus.New()
	var buf bytes.Buffer
	logger.SetOutput(&buf)
	logger.SetFormatter(NewFormatter())
	logger.Error(strings.Repeat("x", 10*MaxLine))
	if buf.Len() > MaxLine || !strings.HasSuffix(buf.String(), " [truncated]\n") {
		t.Errorf("line of %d bytes (want at most %d, marked truncated)", buf.Len(), MaxLine)
	}
	if Level(buf.String()) != logrus.ErrorLevel {
		t.Error("a truncated error line is no longer an error")
	}
}

func TestLevelOfKernelAndOtherLines(t *testing.T) {
	for line, want := range map[string]logrus.Level{
		"[    2.104522] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100": logrus.ErrorLevel,
		"[    3.000000] Oops: 0000 [#1] PREEMPT SMP NOPTI":                                       logrus.ErrorLevel,
		"[    4.1] BUG: kernel NULL pointer dereference, address: 0000000000000000":              logrus.ErrorLevel,
		"[    5.2] Out of memory: Killed process 123 (stress) total-vm:1000kB":                   logrus.WarnLevel,
		"[    0.000000] Linux version 6.1.0":                                                     logrus.DebugLevel,
		"vmpod-agent level=info msg=\"level=error\"":                                             logrus.DebugLevel,
		"vmpod-agent msg=\"no level\"":                                                           logrus.DebugLevel,
		"level=error msg=\"not the agent's\"":                                                    logrus.DebugLevel,
	} {
		if got := Level(line); got != want {
			t.Errorf("Level(%q) = %v, want %v", line, got, want)
		}
	}
}
