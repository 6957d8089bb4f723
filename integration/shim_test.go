package integration

import (
	"testing"
)

func TestShimEcho(t *testing.T) {
	e := newVMPodEnv(t, "")
	out, _, err := e.run("echo", "echo", "hi")
	if err != nil {
		t.Fatal(err)
	}
	if out != "hi\n" {
		t.Errorf("stdout %q, want %q", out, "hi\n")
	}
}
