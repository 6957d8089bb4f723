package bench

import (
	"fmt"
	"slices"
	"time"
)

// summary is a figure over several runs.
type summary struct {
	n                int
	median, min, max float64
}

// summarize returns the median, min and max of xs; the median of an even
// count is the mean of the middle two.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{n: len(s), median: m, min: s[0], max: s[len(s)-1]}
}

// unit formats a figure's values.
type unit int

const (
	seconds unit = iota
	mib
	mibPerSec
	cpus          // CPU time per wall-clock time: 1 is one core busy
	secondsPerMiB // CPU time per MiB moved
)

func (u unit) format(v float64) string {
	switch u {
	case seconds:
		d := time.Duration(v * float64(time.Second))
		if d < time.Second {
			return fmt.Sprintf("%.1f ms", v*1000)
		}
		return fmt.Sprintf("%.2f s", v)
	case mib:
		return fmt.Sprintf("%.1f MiB", v)
	case mibPerSec:
		return fmt.Sprintf("%.1f MiB/s", v)
	case cpus:
		return fmt.Sprintf("%.0f mCPU", v*1000)
	case secondsPerMiB:
		return fmt.Sprintf("%.2f ms/MiB", v*1000)
	}
	return fmt.Sprint(v)
}

func (u unit) formatSummary(s summary) string {
	if s.n == 0 {
		return "not measured"
	}
	lo, hi := u.format(s.min), u.format(s.max)
	if lo == hi {
		return u.format(s.median)
	}
	return fmt.Sprintf("%s (%s–%s)", u.format(s.median), lo, hi)
}
