package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want target
	}{
		{"22", target{"stream", 2, 22}},
		{"1:1024", target{"stream", 1, 1024}},
		{"4294967295:0", target{"stream", 4294967295, 0}},
		{"seqpacket:22", target{"seqpacket", 2, 22}},
		{"dgram:3:1024", target{"dgram", 3, 1024}},
		{"stream:2:22", target{"stream", 2, 22}},
	} {
		got, err := parseTarget(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseTarget(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "x", "2:", ":22", "4294967296:1", "2:65536x", "-1", "1:2:3", "raw:22", "dgram:", "dgram:x:1", "seqpacket:2:3:4"} {
		if got, err := parseTarget(bad); err == nil {
			t.Errorf("parseTarget(%q) = %v, want an error", bad, got)
		}
	}
}

func TestParseArgs(t *testing.T) {
	got, err := parseArgs([]string{"22", "1:1024"}, time.Second, 10, 2)
	if err != nil || len(got) != 2 || got[1] != (target{"stream", 1, 1024}) {
		t.Errorf("parseArgs = %v, %v; want targets 2:22 and 1:1024", got, err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		timeout time.Duration
		n, w    int
		want    string
	}{
		{"no target", nil, time.Second, 0, 1, "no target"},
		{"zero timeout", []string{"22"}, 0, 0, 1, "-timeout"},
		{"negative flood", []string{"22"}, time.Second, -1, 1, "-flood -1"},
		{"huge flood", []string{"22"}, time.Second, maxFlood + 1, 1, "-flood"},
		{"no workers", []string{"22"}, time.Second, 1, 0, "-workers 0"},
		{"bad target", []string{"22", "x:1"}, time.Second, 0, 1, `"x:1"`},
		{"flood without host target", []string{"1:1024"}, time.Second, 5, 1, "CID 2"},
		{"flood without host stream", []string{"dgram:22"}, time.Second, 5, 1, "stream"},
	} {
		if _, err := parseArgs(tc.args, tc.timeout, tc.n, tc.w); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, connected},
		{unix.ECONNREFUSED, refused},
		{unix.ECONNRESET, reset},
		{unix.ETIMEDOUT, timedOut},
		{unix.ENODEV, unreachable},
		{unix.EHOSTUNREACH, unreachable},
		{unix.ESOCKTNOSUPPORT, unsupported},
		{unix.EINVAL, failed},
		{errors.New("not an errno"), failed},
	} {
		if got := classify(tc.err); got.outcome != tc.want {
			t.Errorf("classify(%v) = %v, want %s", tc.err, got, tc.want)
		}
	}
}

func TestFormatCounts(t *testing.T) {
	got := formatCounts(5, map[string]int{reset: 3, unreachable: 2})
	want := "flood 5: connected=0 error=0 refused=0 reset=3 sent=0 timeout=0 unreachable=2 unsupported=0"
	if got != want {
		t.Errorf("formatCounts = %q, want %q", got, want)
	}
}
