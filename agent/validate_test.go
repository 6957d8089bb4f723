package agent

import (
	"regexp"
	"strings"
	"testing"
)

// The written-out matchers must accept exactly what their patterns say;
// FuzzValidators checks the same on random input.
var (
	idRegexp       = regexp.MustCompile(idPattern)
	hostnameRegexp = regexp.MustCompile(hostnamePattern)
)

// checkMatchersAgree fails t when validateID or validateHostname disagrees
// with its pattern on s.
func checkMatchersAgree(t *testing.T, s string) {
	t.Helper()
	if got, want := validateID("id", s) == nil, idRegexp.MatchString(s); got != want {
		t.Errorf("validateID(%q) accepts=%v, pattern %s says %v", s, got, idPattern, want)
	}
	if got, want := validateHostname(s) == nil, hostnameRegexp.MatchString(s); got != want {
		t.Errorf("validateHostname(%q) accepts=%v, pattern %s says %v", s, got, hostnamePattern, want)
	}
}

func TestMatchersAgreeWithPatterns(t *testing.T) {
	inputs := []string{"", "a", "A", "0", "-", ".", "_", "a-", "a.", "a_", "-a", ".a", "_a",
		"a b", "a/b", "a\x00", "a\n", "é", "aé", "abc-1.2_3", "pod-1.example", "a..b", "a--b"}
	for _, n := range []int{62, 63, 64, 65, 127, 128, 129} {
		inputs = append(inputs, strings.Repeat("a", n), "a"+strings.Repeat("-", n-1), "a"+strings.Repeat("_", n-1))
	}
	for c := 0; c < 256; c++ {
		inputs = append(inputs, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}))
	}
	for _, s := range inputs {
		checkMatchersAgree(t, s)
	}
}
