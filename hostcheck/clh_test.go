package hostcheck

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/internal/leakcheck"
)

func TestCheckCLH(t *testing.T) {
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	ctx := context.Background()
	clhConfig := func(path string) string {
		return "[hypervisor]\ntype = \"clh\"\n[hypervisor.clh]\npath = \"" + path + "\"\n"
	}
	good := writeScript(t, dir, `echo "cloud-hypervisor v41.0.0"`)
	if r := checkCLH(ctx, writeConfig(t, clhConfig(good))); r.Status != Pass || !strings.Contains(r.Reason, "v41.0.0") || !strings.Contains(r.Reason, "experimental") {
		t.Errorf("v41: got %s %q", r.Status, r.Reason)
	}
	old := filepath.Join(t.TempDir(), "old")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho cloud-hypervisor v39.0.0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := checkCLH(ctx, writeConfig(t, clhConfig(old))); r.Status != Fail || !strings.Contains(r.Reason, "older than v40") || r.Fix == "" {
		t.Errorf("v39: got %s %q", r.Status, r.Reason)
	}
	cfg := writeConfig(t, clhConfig("/nonexistent/cloud-hypervisor"))
	if r := checkCLH(ctx, cfg); r.Status != Fail || !strings.Contains(r.Reason, "hypervisor.clh.path") || !strings.Contains(r.Fix, `type = "qemu"`) {
		t.Errorf("missing: got %s %q fix %q", r.Status, r.Reason, r.Fix)
	}
}

func TestCheckCLHKVM(t *testing.T) {
	for _, tc := range []struct {
		host   hypervisor.Host
		status Status
		want   string
	}{
		{hypervisor.Host{KVMUsable: true, HWVirt: true}, Pass, "usable"},
		{hypervisor.Host{KVMUsable: true}, Warn, "neither vmx nor svm"},
		{hypervisor.Host{HWVirt: true}, Fail, "KVM only"},
	} {
		r := checkCLHKVM(tc.host)
		if r.Status != tc.status || !strings.Contains(r.Reason, tc.want) || (r.Status != Pass && r.Fix == "") {
			t.Errorf("%+v: got %s %q fix %q", tc.host, r.Status, r.Reason, r.Fix)
		}
	}
}

func TestElfKernelFormat(t *testing.T) {
	dir := t.TempDir()
	elf := filepath.Join(dir, "vmlinux")
	os.WriteFile(elf, []byte("\x7fELF\x02\x01"), 0o644)
	bz := filepath.Join(dir, "bzImage")
	head := make([]byte, 0x206)
	copy(head[0x202:], "HdrS")
	os.WriteFile(bz, head, 0o644)
	if err := isELF(elf); err != nil {
		t.Error(err)
	}
	if _, err := elfKernelFormat(bz); err == nil || !strings.Contains(err.Error(), "not an ELF vmlinux") {
		t.Errorf("bzImage: %v", err)
	}
}

// TestRunCLH: with type = "clh", Run checks CH and KVM instead of QEMU and
// its accelerator.
func TestRunCLH(t *testing.T) {
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	ch := writeScript(t, dir, `echo "cloud-hypervisor v40.0.0"`)
	p := filepath.Join(dir, "vmpod.toml")
	if err := os.WriteFile(p, []byte("[hypervisor]\ntype = \"clh\"\n[hypervisor.clh]\npath = \""+ch+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := Run(context.Background(), Options{ConfigPath: p, ContainerdConfig: filepath.Join(dir, "none.toml")})
	names := map[string]Result{}
	for _, r := range rs {
		names[r.Name] = r
	}
	for _, n := range []string{"cloud-hypervisor", "kvm", "kernel", "initrd", "virtiofsd", "vsock"} {
		if _, ok := names[n]; !ok {
			t.Errorf("no %s check in %+v", n, rs)
		}
	}
	for _, n := range []string{"qemu", "accel"} {
		if _, ok := names[n]; ok {
			t.Errorf("a %s check with type = clh", n)
		}
	}
	if r := names["cloud-hypervisor"]; r.Status != Pass {
		t.Errorf("cloud-hypervisor: %s %q", r.Status, r.Reason)
	}
	if r := names["kvm"]; r.Status != checkCLHKVM(hypervisor.HostInfo()).Status {
		t.Errorf("kvm: %s %q", r.Status, r.Reason)
	}
}
