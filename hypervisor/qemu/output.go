package qemu

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// Bounds on what the guest console can make the host hold.
const (
	maxConsoleLine  = 4096
	consoleTailRows = 30
)

// consoleLog reads the guest console line by line: each line goes to the
// log at debug level and to an optional writer, and the last lines are
// kept for error messages. The guest controls this output, so lines are
// cut at maxConsoleLine.
type consoleLog struct {
	entry *logrus.Entry
	out   io.Writer

	mu   sync.Mutex
	tail []string
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
	c.entry.Debug(s)
	c.mu.Lock()
	c.tail = append(c.tail, s)
	if len(c.tail) > consoleTailRows {
		c.tail = c.tail[len(c.tail)-consoleTailRows:]
	}
	c.mu.Unlock()
}

func (c *consoleLog) Tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}
