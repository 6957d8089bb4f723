package require

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// AllowList is the skips CI accepts. Each line of its file is
//
//	<package> <test> <reason>
//
// with package the directory relative to the module root and test the full
// test name (a listed test allows its subtests too); # starts a comment.
type AllowList []AllowEntry

// AllowEntry is one allowed skip.
type AllowEntry struct {
	Package, Test, Reason string
	Line                  int
}

// ParseAllowList reads an allow-list; name is used in errors.
func ParseAllowList(r io.Reader, name string) (AllowList, error) {
	var list AllowList
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 {
			return nil, fmt.Errorf("%s:%d: want <package> <test> <reason>, got %q", name, n, strings.TrimSpace(line))
		}
		list = append(list, AllowEntry{Package: f[0], Test: f[1], Reason: strings.Join(f[2:], " "), Line: n})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return list, nil
}

// Allows reports whether test (a full name, subtests after /) of package
// pkg may skip in CI, and why.
func (l AllowList) Allows(pkg, test string) (reason string, ok bool) {
	pkg = strings.TrimPrefix(pkg, "./")
	for _, e := range l {
		if strings.TrimPrefix(e.Package, "./") != pkg {
			continue
		}
		if test == e.Test || strings.HasPrefix(test, e.Test+"/") {
			return e.Reason, true
		}
	}
	return "", false
}
