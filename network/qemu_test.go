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
	"github.com/vmpod/vmpod/internal/require"
)

// TestQEMUAcceptsTap hands the tap to QEMU the way the QEMU driver does
// (ExtraFiles, "-netdev tap,fd=3,vhost=off" and a virtio-net NIC with the
// interface's MAC: PCI on q35, MMIO on microvm) and checks that QEMU takes
// it. The VM stays paused (-S): no guest boots, only the host side of the
// device is initialised.
func TestQEMUAcceptsTap(t *testing.T) {
	requireRoot(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		require.Missing(t, "needs qemu-system-x86_64")
	}
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}, LinkPrefixes: []string{"vmpt"}, NetnsPrefixes: []string{"vmpt"}})
	p := newPodNet(t)
	eps := setup(t, p.path)
	ep := eps.List[0]

	for _, m := range []struct{ machine, nic string }{
		{"q35", "virtio-net-pci"},
		{"microvm", "virtio-net-device"},
	} {
		t.Run(m.machine, func(t *testing.T) {
			got := runQEMU(t, qemu, dir, ep.Tap,
				"-machine", m.machine+",accel=tcg",
				"-netdev", "tap,id=net0,fd=3,vhost=off",
				"-device", m.nic+",netdev=net0,mac="+ep.MAC.String())
			for _, want := range []string{"type=tap,fd=3", "macaddr=" + ep.MAC.String()} {
				if !strings.Contains(got, want) {
					t.Errorf("info network lacks %q:\n%s", want, got)
				}
			}
		})
	}
}

// runQEMU runs a paused QEMU with args and the tap as fd 3, asks its
// monitor for "info network" and returns the output.
func runQEMU(t *testing.T, qemu, dir string, tap *os.File, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append([]string{"-S", "-nodefaults", "-display", "none", "-m", "64", "-monitor", "stdio"}, args...)
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Dir = dir // attributes the process to this test for leakcheck
	cmd.ExtraFiles = []*os.File{tap}
	cmd.Stdin = strings.NewReader("info network\nquit\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("qemu %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}
