package network

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/leakcheck"
)

// TestQEMUAcceptsTap hands the tap to QEMU the way the QEMU driver does
// (ExtraFiles, "-netdev tap,fd=3,vhost=off" and a virtio-net NIC with the
// interface's MAC) and checks that QEMU takes it. The VM stays paused (-S):
// no guest boots, only the host side of the device is initialised.
func TestQEMUAcceptsTap(t *testing.T) {
	requireRoot(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("needs qemu-system-x86_64")
	}
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}, LinkPrefixes: []string{"vmpt"}, Netns: true})
	p := newPodNet(t)
	eps := setup(t, p.path)
	ep := eps.List[0]

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-S", "-nodefaults", "-display", "none", "-machine", "q35,accel=tcg", "-m", "64",
		"-monitor", "stdio",
		"-netdev", "tap,id=net0,fd=3,vhost=off",
		"-device", "virtio-net-pci,netdev=net0,mac="+ep.MAC.String(),
	)
	cmd.Dir = dir // attributes the process to this test for leakcheck
	cmd.ExtraFiles = []*os.File{ep.Tap}
	cmd.Stdin = strings.NewReader("info network\nquit\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("qemu: %v\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{"type=tap,fd=3", "macaddr=" + ep.MAC.String()} {
		if !strings.Contains(got, want) {
			t.Errorf("info network lacks %q:\n%s", want, got)
		}
	}
}
