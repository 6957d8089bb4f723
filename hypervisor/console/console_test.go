package console

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestConsoleLog(t *testing.T) {
	logger := logrus.New()
	logger.SetLevel(logrus.DebugLevel)
	var logged bytes.Buffer
	logger.SetOutput(&logged)
	var raw bytes.Buffer
	c := &Log{Entry: logrus.NewEntry(logger), Out: &raw}
	long := strings.Repeat("x", maxLine*2+10)
	in := "\x1b[2Jfirst\r\n" + long + "\n"
	for i := 0; i < tailRows+5; i++ {
		in += "line\n"
	}
	in += "last without newline"
	c.Run(strings.NewReader(in))
	if raw.String() != in {
		t.Error("console writer did not get the raw output")
	}
	if !strings.Contains(logged.String(), "[2Jfirst") || strings.Contains(logged.String(), "\x1b") {
		t.Errorf("escape characters not dropped from the log: %q", logged.String()[:40])
	}
	tail := strings.Split(c.Tail(), "\n")
	if len(tail) != tailRows || tail[len(tail)-1] != "last without newline" {
		t.Errorf("tail has %d rows ending %q", len(tail), tail[len(tail)-1])
	}
	for _, l := range strings.Split(logged.String(), "\n") {
		if len(l) > maxLine+200 {
			t.Errorf("logged line of %d bytes: lines must be cut at %d", len(l), maxLine)
		}
	}
}

// The agent's warnings and the kernel's panics are raised above debug,
// within a budget: a guest flooding the console with warnings gets
// raiseBurst of them, then one note, then debug.
func TestConsoleLogRaisesWarnings(t *testing.T) {
	logger := logrus.New()
	logger.SetLevel(logrus.InfoLevel)
	var logged bytes.Buffer
	logger.SetOutput(&logged)
	c := &Log{Entry: logrus.NewEntry(logger)}
	in := "plain boot line\n" +
		"vmpod-agent level=info msg=\"vmpod-agent serving\"\n" +
		"vmpod-agent level=warning msg=\"request failed\" error=\"exec: no such file\"\n" +
		"[    1.0] Kernel panic - not syncing: VFS\n"
	c.Run(strings.NewReader(in))
	out := logged.String()
	if strings.Contains(out, "plain boot line") || strings.Contains(out, "vmpod-agent serving") {
		t.Errorf("debug lines logged at info: %q", out)
	}
	if !strings.Contains(out, `level=warning msg="vmpod-agent level=warning`) {
		t.Errorf("agent warning not logged at warning: %q", out)
	}
	if !strings.Contains(out, `level=error msg="[    1.0] Kernel panic`) {
		t.Errorf("kernel panic not logged at error: %q", out)
	}

	logged.Reset()
	flood := strings.Repeat("vmpod-agent level=error msg=flood\n", 3*raiseBurst)
	c2 := &Log{Entry: logrus.NewEntry(logger)}
	c2.Run(strings.NewReader(flood))
	if n := strings.Count(logged.String(), "msg=flood"); n != raiseBurst {
		t.Errorf("%d flood lines raised, want the budget of %d", n, raiseBurst)
	}
	if !strings.Contains(logged.String(), "the rest stay at debug level") {
		t.Error("no note that further warnings were lowered")
	}
}
