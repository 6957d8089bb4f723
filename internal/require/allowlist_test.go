package require

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAllowList(t *testing.T) {
	list, err := ParseAllowList(strings.NewReader("# comment\n\nvsock TestA the reason # why\nvm  TestB/sub  another one\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pkg, test, reason string
		ok                bool
	}{
		{"vsock", "TestA", "the reason", true},
		{"./vsock", "TestA/x", "the reason", true},
		{"vsock", "TestAB", "", false},
		{"vm", "TestA", "", false},
		{"vm", "TestB", "", false},
		{"vm", "TestB/sub", "another one", true},
	} {
		reason, ok := list.Allows(tc.pkg, tc.test)
		if ok != tc.ok || reason != tc.reason {
			t.Errorf("Allows(%q, %q) = %q, %v; want %q, %v", tc.pkg, tc.test, reason, ok, tc.reason, tc.ok)
		}
	}
	if _, err := ParseAllowList(strings.NewReader("vsock TestA\n"), "f"); err == nil || !strings.Contains(err.Error(), "f:1") {
		t.Errorf("a line without a reason: error %v, want one naming f:1", err)
	}
}

// TestAllowListFile checks the repository's allow-list parses and lists
// packages that exist.
func TestAllowListFile(t *testing.T) {
	list, err := loadAllowList()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		if _, err := os.Stat(filepath.Join(ModuleRoot(), e.Package)); err != nil {
			t.Errorf("%s:%d: package %s: %v", AllowListPath, e.Line, e.Package, err)
		}
	}
}

func TestPackageOf(t *testing.T) {
	if got := packageOf(); got != "internal/require" {
		t.Errorf("packageOf() = %q, want internal/require", got)
	}
}
