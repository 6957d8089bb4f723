// Package console turns a guest's console output into logs: every
// driver hands it the byte stream it gets from its VMM (QEMU's stdout, Cloud
// Hypervisor's serial FIFO), and it keeps the last lines for error messages.
package console

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
	maxLine  = 4096
	tailRows = 30
	// A guest may raise at most raiseBurst console lines above debug per
	// raiseWindow: the guest is untrusted and must not flood the host's
	// log at warning level. Lines over the budget stay at debug.
	raiseBurst  = 20
	raiseWindow = 10 * time.Second
)

// Log reads the guest console line by line: each line goes to the log (at
// debug level, unless consolelog.Level raises it) and to an optional writer, and the last lines are kept for
// error messages. The guest controls this output, so lines are cut at
// maxLine.
type Log struct {
	// Entry receives each line at debug level; set it before Run.
	Entry *logrus.Entry
	// Out, when set, receives the raw output.
	Out io.Writer

	mu   sync.Mutex
	tail []string

	// Only Run's goroutine touches these.
	windowStart time.Time
	raised      int
}

// Run reads r until it ends or fails.
func (c *Log) Run(r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
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

func (c *Log) line(b []byte) {
	if c.Out != nil {
		c.Out.Write(b)
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
	if c.Entry != nil {
		// The agent's warnings and errors and the kernel's panics reach
		// the log with debug off; the rest of the console is debug.
		c.Entry.Log(c.level(s), s)
	}
	c.mu.Lock()
	c.tail = append(c.tail, s)
	if len(c.tail) > tailRows {
		c.tail = c.tail[len(c.tail)-tailRows:]
	}
	c.mu.Unlock()
}

// level is the line's log level (consolelog.Level) within the budget of
// raised lines.
func (c *Log) level(s string) logrus.Level {
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
		c.Entry.Warnf("guest console: more than %d warnings in %v; the rest stay at debug level", raiseBurst, raiseWindow)
	}
	return logrus.DebugLevel
}

// Tail is the last lines read, for error messages.
func (c *Log) Tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}
