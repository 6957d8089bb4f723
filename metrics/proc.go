package metrics

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ProcStat is what the metrics report of one host process.
type ProcStat struct {
	CPUSeconds float64 // user + system
	RSSBytes   uint64
	// PSSBytes is the proportional set size (smaps_rollup): shared pages
	// divided among their users, so that a pod's processes add up.
	PSSBytes uint64
	FDs      int
	Threads  int
}

// clockTicks is sysconf(_SC_CLK_TCK): USER_HZ, 100 on Linux.
const clockTicks = 100

// maxProcRead bounds one read of a /proc file.
const maxProcRead = 64 << 10

// procRoot is /proc; tests point it at a fixture.
var procRoot = "/proc"

// ReadProc reads process pid's CPU time, memory, fds and threads from /proc.
func ReadProc(pid int) (ProcStat, error) {
	if pid <= 0 {
		return ProcStat{}, fmt.Errorf("process %d: not a pid", pid)
	}
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	var st ProcStat
	stat, err := readFile(filepath.Join(dir, "stat"))
	if err != nil {
		return st, err
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// the fields after the last ')' start with field 3 (state).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return st, fmt.Errorf("%s/stat: no command name", dir)
	}
	f := strings.Fields(string(stat[i+1:]))
	// utime is field 14, stime 15, num_threads 20, rss 24 (in pages).
	if len(f) < 22 {
		return st, fmt.Errorf("%s/stat: %d fields", dir, len(f)+2)
	}
	field := func(n int) uint64 { v, _ := strconv.ParseUint(f[n-3], 10, 64); return v }
	st.CPUSeconds = float64(field(14)+field(15)) / clockTicks
	st.Threads = int(field(20))
	st.RSSBytes = field(24) * uint64(os.Getpagesize())
	// smaps_rollup needs ptrace access (root has it); without it PSS is 0.
	if data, err := readFile(filepath.Join(dir, "smaps_rollup")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				st.PSSBytes = kb * 1024
				break
			}
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "fd")); err == nil {
		st.FDs = len(ents)
	}
	return st, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxProcRead))
}
