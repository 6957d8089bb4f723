package bench

import (
	"bufio"
	"io"
	"strconv"
	"strings"
	"time"
)

// logEntry is one line of containerd's text log (logrus' logfmt):
// `time="..." level=debug msg="..." key=value key="quoted value"`. Shim
// lines reach containerd's log with the same format.
type logEntry struct {
	time   time.Time
	msg    string
	fields map[string]string
}

// maxLogLine bounds one line; longer lines (QEMU's argument list is long,
// but not this long) are skipped.
const maxLogLine = 1 << 20

// parseLog reads the entries of r; lines that are not logfmt with a
// parseable time are skipped.
func parseLog(r io.Reader) ([]logEntry, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLogLine)
	var out []logEntry
	for sc.Scan() {
		if e, ok := parseLogLine(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// parseLogLine parses one line. Output a process wrote to containerd's
// stderr without a newline can precede the time key on the same line, so
// parsing starts at the first `time="`.
func parseLogLine(line string) (logEntry, bool) {
	i := strings.Index(line, `time="`)
	if i < 0 {
		return logEntry{}, false
	}
	fields := map[string]string{}
	s := line[i:]
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		sp := strings.IndexByte(s, ' ')
		if eq < 0 {
			break
		}
		if sp >= 0 && sp < eq { // a word without a value: skip it
			s = s[sp:]
			continue
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			end := quotedEnd(s)
			if end < 0 {
				return logEntry{}, false
			}
			v, err := strconv.Unquote(s[:end])
			if err != nil {
				return logEntry{}, false
			}
			val, s = v, s[end:]
		} else {
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		if _, dup := fields[key]; !dup {
			fields[key] = val
		}
	}
	t, err := time.Parse(time.RFC3339Nano, fields["time"])
	if err != nil {
		return logEntry{}, false
	}
	return logEntry{time: t, msg: fields["msg"], fields: fields}, true
}

// quotedEnd returns the index just past the closing quote of the quoted
// string at the start of s, or -1.
func quotedEnd(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}
