package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// process is one entry of /proc.
type process struct {
	pid, ppid int
	comm      string
	cmdline   []string
}

// listProcesses reads /proc; processes that vanish meanwhile are skipped.
func listProcesses(procRoot string) ([]process, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var out []process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue
		}
		comm, ppid, ok := parseStat(string(stat))
		if !ok {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		out = append(out, process{pid: pid, ppid: ppid, comm: comm, cmdline: strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")})
	}
	return out, nil
}

// parseStat returns comm and ppid from /proc/<pid>/stat: "pid (comm) state
// ppid ...", where comm may hold spaces and parentheses.
func parseStat(s string) (comm string, ppid int, ok bool) {
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, false
	}
	rest := strings.Fields(s[end+1:])
	if len(rest) < 2 {
		return "", 0, false
	}
	ppid, err := strconv.Atoi(rest[1])
	if err != nil {
		return "", 0, false
	}
	return s[open+1 : end], ppid, true
}

// podProcesses returns the long-lived shim of container id under the
// containerd at address (its `-address` and `-id` arguments; not a
// start or delete invocation) first, then all its descendants: QEMU and
// virtiofsd, or runc's container processes. Nil when there is no shim.
func podProcesses(procs []process, address, id string) []process {
	var shim *process
	for i, p := range procs {
		if hasArg(p.cmdline, "-address", address) && hasArg(p.cmdline, "-id", id) &&
			!slices.Contains(p.cmdline, "start") && !slices.Contains(p.cmdline, "delete") {
			shim = &procs[i]
			break
		}
	}
	if shim == nil {
		return nil
	}
	owned := map[int]bool{shim.pid: true}
	for changed := true; changed; {
		changed = false
		for _, p := range procs {
			if !owned[p.pid] && owned[p.ppid] {
				owned[p.pid], changed = true, true
			}
		}
	}
	out := []process{*shim}
	for _, p := range procs {
		if owned[p.pid] && p.pid != shim.pid {
			out = append(out, p)
		}
	}
	return out
}

func hasArg(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

// procKiB returns the value of the "<key>:  N kB" line of a /proc file
// (Pss in smaps_rollup, VmRSS in status).
func procKiB(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseKiB(b, key, path)
}

func parseKiB(b []byte, key, path string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: malformed %s line %q", path, key, sc.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s: malformed %s value %q", path, key, f[0])
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: no %s line", path, key)
}

// pssMiB is a process's proportional set size.
func pssMiB(procRoot string, pid int) (float64, error) {
	kb, err := procKiB(filepath.Join(procRoot, strconv.Itoa(pid), "smaps_rollup"), "Pss")
	return float64(kb) / 1024, err
}

// rssMiB is a process's resident set size.
func rssMiB(procRoot string, pid int) (float64, error) {
	kb, err := procKiB(filepath.Join(procRoot, strconv.Itoa(pid), "status"), "VmRSS")
	return float64(kb) / 1024, err
}

// totalPSS sums the PSS of ps; processes that exited meanwhile count 0.
func totalPSS(procRoot string, ps []process) float64 {
	var sum float64
	for _, p := range ps {
		if v, err := pssMiB(procRoot, p.pid); err == nil {
			sum += v
		}
	}
	return sum
}

// userHZ is the unit of the times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// cpuSeconds returns the user plus system time a process (all its
// threads) has used.
func cpuSeconds(procRoot string, pid int) (float64, error) {
	path := filepath.Join(procRoot, strconv.Itoa(pid), "stat")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, fmt.Errorf("%s: malformed", path)
	}
	// After "(comm)": state ppid pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime stime.
	f := strings.Fields(s[end+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: %d fields after comm, want 13 or more", path, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: cpu time %q: %w", path, v, err)
		}
		ticks += n
	}
	return float64(ticks) / userHZ, nil
}
