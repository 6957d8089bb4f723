// Command testsummary reads `go test -json` on stdin (or -in, a recorded
// run), shows its progress compactly (a line per package, the output of
// what failed; -v: everything; -q: nothing), optionally records the stream (-json), and
// ends with every skip and its reason, every failure, and the line
//
//	N passed, N failed, N skipped
//
// It exits 1 when a test or package failed, when no test ran, or, under
// VMPOD_REQUIRE_ALL=1 (or -strict), when a skip is not on the allow-list
// (-allow, .ci/allowed-skips).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vmpod/vmpod/internal/require"
)

func main() {
	in := flag.String("in", "", "read this recorded `go test -json` run instead of stdin")
	record := flag.String("json", "", "also write the raw stream to this file")
	allowPath := flag.String("allow", "", "the allow-list of skips (<package> <test> <reason> a line)")
	module := flag.String("module", "github.com/vmpod/vmpod", "import path prefix dropped from package names")
	strict := flag.Bool("strict", require.All(), "fail on a skip not in the allow-list (default: "+require.Env+"=1)")
	verbose := flag.Bool("v", false, "echo every output line")
	quiet := flag.Bool("q", false, "print only the summary, not the progress")
	flag.Parse()
	good, err := run(*in, *record, *allowPath, *module, *strict, *verbose, *quiet)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if !good {
		os.Exit(1) // the summary says why; its closing line stays last
	}
}

// run summarises the stream; good is the summary's verdict.
func run(in, record, allowPath, module string, strict, verbose, quiet bool) (good bool, err error) {
	var allow require.AllowList
	if allowPath != "" {
		f, err := os.Open(allowPath)
		if err != nil {
			return false, err
		}
		allow, err = require.ParseAllowList(f, allowPath)
		f.Close()
		if err != nil {
			return false, err
		}
	}
	var r io.Reader = os.Stdin
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			return false, err
		}
		defer f.Close()
		r = f
	}
	var rec *os.File
	if record != "" {
		if err := os.MkdirAll(filepath.Dir(record), 0o755); err != nil {
			return false, err
		}
		f, err := os.Create(record)
		if err != nil {
			return false, err
		}
		defer f.Close()
		rec = f
	}
	var progress io.Writer = os.Stdout
	if quiet {
		progress = io.Discard
	}
	s := newSummary(progress, module, allow, verbose)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if rec != nil {
			if _, err := rec.Write(append(sc.Bytes(), '\n')); err != nil {
				return false, fmt.Errorf("record %s: %w", record, err)
			}
		}
		s.line(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read the test stream: %w", err)
	}
	s.out = os.Stdout
	return s.report(strict, allowPath), nil
}
