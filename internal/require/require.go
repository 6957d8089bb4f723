// Package require decides what a test does when the machine lacks something
// it needs (a tool, an image, a privilege, a device): on a developer's
// machine it skips with the reason; in CI, where VMPOD_REQUIRE_ALL=1, it
// fails, unless the test is on the allow-list (.ci/allowed-skips), so that
// CI cannot go green by testing less than it claims.
package require

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Env is the variable that turns a missing requirement into a failure.
const Env = "VMPOD_REQUIRE_ALL"

// AllowListPath is the allow-list, relative to the module root;
// $VMPOD_ALLOWED_SKIPS names another file.
const AllowListPath = ".ci/allowed-skips"

// AllowListEnv overrides AllowListPath.
const AllowListEnv = "VMPOD_ALLOWED_SKIPS"

// All reports whether every requirement must be met (VMPOD_REQUIRE_ALL=1).
func All() bool { return os.Getenv(Env) == "1" }

// Missing ends the test because the machine lacks what reason names: a skip
// on a developer's machine, a failure under VMPOD_REQUIRE_ALL=1 unless the
// allow-list lists this test.
func Missing(t testing.TB, args ...any) {
	t.Helper()
	missing(t, fmt.Sprint(args...))
}

// Missingf is Missing with a format.
func Missingf(t testing.TB, format string, args ...any) {
	t.Helper()
	missing(t, fmt.Sprintf(format, args...))
}

// NoError calls Missing with err when err is not nil.
func NoError(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		missing(t, err.Error())
	}
}

func missing(t testing.TB, reason string) {
	t.Helper()
	if !All() {
		t.Skip(reason)
	}
	list, err := loadAllowList()
	if err != nil {
		t.Fatalf("missing requirement: %s; and the allow-list: %v", reason, err)
	}
	pkg := packageOf()
	if why, ok := list.Allows(pkg, t.Name()); ok {
		t.Skipf("%s (allowed in CI: %s)", reason, why)
	}
	t.Fatalf("missing requirement: %s\n%s=1 makes this a failure; a skip CI accepts goes in %s as %q with a reason",
		reason, Env, AllowListPath, pkg+" "+t.Name())
}

// ModuleRoot is the repository's top directory.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// packageOf names the package under test as the allow-list does: its
// directory relative to the module root ("." for the root). go test runs a
// package's test binary in the package's directory.
func packageOf() string {
	wd, err := os.Getwd()
	if err != nil {
		return "?"
	}
	rel, err := filepath.Rel(ModuleRoot(), wd)
	if err != nil {
		return wd
	}
	return filepath.ToSlash(rel)
}

var allow struct {
	once sync.Once
	list AllowList
	err  error
}

func loadAllowList() (AllowList, error) {
	allow.once.Do(func() {
		path := filepath.Join(ModuleRoot(), AllowListPath)
		if p := os.Getenv(AllowListEnv); p != "" {
			path = p
		}
		f, err := os.Open(path)
		if err != nil {
			allow.err = err
			return
		}
		defer f.Close()
		allow.list, allow.err = ParseAllowList(f, path)
	})
	return allow.list, allow.err
}
