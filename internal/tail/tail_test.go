package tail

import (
	"strings"
	"testing"
)

func TestKeepsLastBytes(t *testing.T) {
	b := New(8)
	for _, s := range []string{"hello ", "world", ", again\n"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := b.String(); got != ", again" {
		t.Errorf("String() = %q, want %q", got, ", again")
	}
	big := strings.Repeat("x", 100) + "tail-end"
	b.Write([]byte(big))
	if got := b.String(); got != "tail-end" {
		t.Errorf("String() after a large write = %q", got)
	}
}
