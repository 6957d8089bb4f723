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
