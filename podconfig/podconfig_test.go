package podconfig

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/config"
)

func base(enable ...string) *config.Config {
	return &config.Config{
		Hypervisor: config.Hypervisor{QEMU: config.QEMU{
			MachineType:       "q35",
			KernelParams:      []string{"quiet"},
			DefaultVCPUs:      1,
			DefaultMemory:     512,
			EnableAnnotations: enable,
		}},
		Source: "/etc/vmpod/test.toml",
	}
}

func TestApply(t *testing.T) {
	all := []string{"default_vcpus", "default_memory", "kernel_params", "machine_type"}
	for _, tc := range []struct {
		name   string
		enable []string
		ann    map[string]string
		check  func(t *testing.T, q config.QEMU)
	}{
		{"no annotations", nil, map[string]string{"io.kubernetes.cri.sandbox-id": "x"}, func(t *testing.T, q config.QEMU) {
			if q.DefaultVCPUs != 1 || q.DefaultMemory != 512 || q.MachineType != "q35" {
				t.Errorf("changed: %+v", q)
			}
		}},
		{"vcpus and memory", all, map[string]string{DefaultVCPUs: "1", DefaultMemory: "768"}, func(t *testing.T, q config.QEMU) {
			if q.DefaultVCPUs != 1 || q.DefaultMemory != 768 {
				t.Errorf("vcpus %d memory %d, want 1 and 768", q.DefaultVCPUs, q.DefaultMemory)
			}
		}},
		{"fractional vcpus round up, as in Kata", all, map[string]string{DefaultVCPUs: "0.5"}, func(t *testing.T, q config.QEMU) {
			if q.DefaultVCPUs != 1 {
				t.Errorf("vcpus %d, want 1", q.DefaultVCPUs)
			}
		}},
		{"kernel params appended", all, map[string]string{KernelParams: " loglevel=3  panic=5 "}, func(t *testing.T, q config.QEMU) {
			if want := []string{"quiet", "loglevel=3", "panic=5"}; !slices.Equal(q.KernelParams, want) {
				t.Errorf("kernel params %q, want %q", q.KernelParams, want)
			}
		}},
		{"machine type", all, map[string]string{MachineType: "microvm"}, func(t *testing.T, q config.QEMU) {
			if q.MachineType != "microvm" {
				t.Errorf("machine %q", q.MachineType)
			}
		}},
		{"patterns are regular expressions, unanchored as in Kata", []string{"^default_", "params"}, map[string]string{DefaultMemory: "1024", KernelParams: "x=1"}, func(t *testing.T, q config.QEMU) {
			if q.DefaultMemory != 1024 || !slices.Contains(q.KernelParams, "x=1") {
				t.Errorf("got %+v", q)
			}
		}},
		{"an enabled annotation vmpod does not support is ignored", []string{".*"}, map[string]string{HypervisorPrefix + "enable_iommu": "true"}, func(t *testing.T, q config.QEMU) {}},
		{"Kata's runtime and agent annotations are not gated, and ignored", nil, map[string]string{KataPrefix + "config.runtime.disable_guest_seccomp": "true", KataPrefix + "config.agent.kernel_modules": "e1000"}, func(t *testing.T, q config.QEMU) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base(tc.enable...)
			out, err := Apply(context.Background(), in, tc.ann)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, out.Hypervisor.QEMU)
			if !slices.Equal(in.Hypervisor.QEMU.KernelParams, []string{"quiet"}) || in.Hypervisor.QEMU.DefaultMemory != 512 {
				t.Errorf("Apply changed its input: %+v", in.Hypervisor.QEMU)
			}
		})
	}
}

func TestApplyRefused(t *testing.T) {
	all := []string{"default_vcpus", "default_memory", "kernel_params", "machine_type"}
	tooMany := strconv.Itoa(min(runtime.NumCPU(), config.MaxVCPUs) + 1)
	for _, tc := range []struct {
		name   string
		enable []string
		ann    map[string]string
		want   []string
	}{
		{"not enabled", nil, map[string]string{DefaultVCPUs: "2"},
			[]string{"pod annotation " + DefaultVCPUs + " is not enabled", EnableKey, "/etc/vmpod/test.toml", `"default_vcpus"`}},
		{"enabled for another", []string{"default_memory"}, map[string]string{DefaultMemory: "1024", KernelParams: "init=/bin/sh"},
			[]string{KernelParams + " is not enabled", EnableKey}},
		{"unsupported and not enabled", []string{"default_vcpus"}, map[string]string{HypervisorPrefix + "path": "/tmp/qemu"},
			[]string{HypervisorPrefix + "path is not enabled"}},
		{"vcpus not a number", all, map[string]string{DefaultVCPUs: "two"}, []string{DefaultVCPUs, `"two"`, "not a number"}},
		{"vcpus zero", all, map[string]string{DefaultVCPUs: "0"}, []string{DefaultVCPUs, `"0"`, "outside 1.."}},
		{"vcpus negative", all, map[string]string{DefaultVCPUs: "-1"}, []string{DefaultVCPUs, `"-1"`}},
		{"vcpus NaN", all, map[string]string{DefaultVCPUs: "NaN"}, []string{DefaultVCPUs, `"NaN"`}},
		{"vcpus more than the host", all, map[string]string{DefaultVCPUs: tooMany}, []string{DefaultVCPUs, `"` + tooMany + `"`, "host"}},
		{"memory not a number", all, map[string]string{DefaultMemory: "1Gi"}, []string{DefaultMemory, `"1Gi"`, "MiB"}},
		{"memory too small", all, map[string]string{DefaultMemory: "32"}, []string{DefaultMemory, `"32"`, "outside 64.."}},
		{"memory too large", all, map[string]string{DefaultMemory: "999999999"}, []string{DefaultMemory, `"999999999"`}},
		{"machine type", all, map[string]string{MachineType: "pc"}, []string{MachineType, `"pc"`, "q35, microvm"}},
		{"kernel params with a NUL", all, map[string]string{KernelParams: "a=1\x00b"}, []string{KernelParams, "NUL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Apply(context.Background(), base(tc.enable...), tc.ann)
			if err == nil {
				t.Fatalf("Apply accepted %v: %+v", tc.ann, out.Hypervisor.QEMU)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		name     string
		want     bool
	}{
		{nil, "default_vcpus", false},
		{[]string{"default_vcpus"}, "default_vcpus", true},
		{[]string{"vcpus"}, "default_vcpus", true}, // unanchored, as Kata
		{[]string{"^vcpus$"}, "default_vcpus", false},
		{[]string{"default_memory"}, "default_vcpus", false},
		{[]string{".*"}, "anything", true},
	} {
		if got := Allowed(tc.patterns, tc.name); got != tc.want {
			t.Errorf("Allowed(%q, %q) = %v, want %v", tc.patterns, tc.name, got, tc.want)
		}
	}
}
