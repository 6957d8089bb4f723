package qemu

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/vmpod/vmpod/internal/consolelog"
)

// Bounds on what the guest console can make the host hold.
const (
	maxConsoleLine  = 4096
	consoleTailRows = 30
	// A guest may raise at most raiseBurst console lines above debug per
	// raiseWindow: the guest is untrusted and must not flood the host's
	// log at warning level. Lines over the budget stay at debug.
	raiseBurst  = 20
	raiseWindow = 10 * time.Second
)

// consoleLog reads the guest console line by line: each line goes to the
// log (at debug level, unless consolelog.Level raises it) and to an
// optional writer, and the last lines are
// kept for error messages. The guest controls this output, so lines are
// cut at maxConsoleLine.
type consoleLog struct {
	entry *logrus.Entry
	out   io.Writer

	mu   sync.Mutex
	tail []string

	// Only run's goroutine touches these.
	windowStart time.Time
	raised      int
}

func (c *consoleLog) run(r io.Reader) {
	br := bufio.NewReaderSize(r, maxConsoleLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			c.line(line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func (c *consoleLog) line(b []byte) {
	if c.out != nil {
		c.out.Write(b)
	}
	s := strings.TrimRight(string(b), "\r\n")
	// Boot firmware paints the screen with escape sequences; drop them
	// from the log.
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' {
			return -1
		}
		return r
	}, s)
	if s == "" {
		return
	}
	// The agent's warnings and errors and the kernel's panics reach the
	// log with debug off; the rest of the console is debug.
	c.entry.Log(c.level(s), s)
	c.mu.Lock()
	c.tail = append(c.tail, s)
	if len(c.tail) > consoleTailRows {
		c.tail = c.tail[len(c.tail)-consoleTailRows:]
	}
	c.mu.Unlock()
}

// level is the line's log level (consolelog.Level) within the budget of
// raised lines.
func (c *consoleLog) level(s string) logrus.Level {
	lvl := consolelog.Level(s)
	if lvl == logrus.DebugLevel {
		return lvl
	}
	now := time.Now()
	if now.Sub(c.windowStart) > raiseWindow {
		c.windowStart, c.raised = now, 0
	}
	c.raised++
	switch {
	case c.raised <= raiseBurst:
		return lvl
	case c.raised == raiseBurst+1:
		c.entry.Warnf("guest console: more than %d warnings in %v; the rest stay at debug level", raiseBurst, raiseWindow)
	}
	return logrus.DebugLevel
}

func (c *consoleLog) Tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}
