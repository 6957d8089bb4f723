package require

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const helperEnv = "VMPOD_REQUIRE_HELPER"

// TestMissingHelper is run by TestMissing in a child process: it reports
// a missing requirement.
func TestMissingHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	Missing(t, "no frobnicator here")
	t.Log("after Missing")
}

// TestMissing runs TestMissingHelper as go test would: it skips without
// VMPOD_REQUIRE_ALL, fails with it, and skips with it when the allow-list
// names the test.
func TestMissing(t *testing.T) {
	allowed := filepath.Join(t.TempDir(), "allowed")
	if err := os.WriteFile(allowed, []byte("internal/require TestMissingHelper the test says so\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		env      []string
		wantFail bool
		want     string
	}{
		{"developer machine", nil, false, "--- SKIP: TestMissingHelper"},
		{"CI", []string{Env + "=1"}, true, "missing requirement: no frobnicator here"},
		{"CI, allowed", []string{Env + "=1", AllowListEnv + "=" + allowed}, false, "allowed in CI: the test says so"},
		{"CI, broken allow-list", []string{Env + "=1", AllowListEnv + "=/nonexistent"}, true, "/nonexistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingHelper$", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"=1", Env+"=", AllowListEnv+"=")
			cmd.Env = append(cmd.Env, tc.env...)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.wantFail {
				t.Errorf("failed: %v, want %v\n%s", failed, tc.wantFail, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
			if strings.Contains(string(out), "after Missing") {
				t.Errorf("the test went on after Missing:\n%s", out)
			}
		})
	}
}
