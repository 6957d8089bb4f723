package sizing

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
)

// withHostCPUs pretends the host has n CPUs for the test.
func withHostCPUs(t *testing.T, n int) {
	old := hostCPUs
	hostCPUs = func() int { return n }
	t.Cleanup(func() { hostCPUs = old })
}

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }
func ann(kv ...string) *specs.Spec {
	a := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return &specs.Spec{Annotations: a}
}

// pod is the four annotations containerd writes for a pod's total.
func pod(period, quota, shares, mem string) *specs.Spec {
	return ann(AnnotationCPUPeriod, period, AnnotationCPUQuota, quota, AnnotationCPUShares, shares, AnnotationMemory, mem)
}

func TestFor(t *testing.T) {
	withHostCPUs(t, 8)
	q := config.QEMU{DefaultVCPUs: 1, DefaultMemory: 512}
	withRes := func(r *specs.LinuxResources) *specs.Spec { return &specs.Spec{Linux: &specs.Linux{Resources: r}} }
	for _, tc := range []struct {
		name string
		mode string // "" = both
		spec *specs.Spec
		want Size
	}{
		// containerd 1.7+/2.x: the pod's total in the sandbox annotations.
		{"2 CPUs and 1 GiB", "", pod("100000", "200000", "2048", "1073741824"), Size{3, 1536}},
		{"quota rounds up", "", pod("100000", "150001", "1536", "0"), Size{3, 512}},
		{"less than a CPU is one", "", pod("100000", "1000", "10", "0"), Size{2, 512}},
		{"memory rounds up to MiB", "", pod("0", "0", "0", "1048577"), Size{1, 514}},
		{"no limits (kubelet's zeros)", "", pod("0", "0", "2", "0"), Size{1, 512}},
		{"unlimited -1", "", pod("100000", "-1", "0", "-1"), Size{1, 512}},
		{"shares alone add nothing", "", ann(AnnotationCPUShares, "4096"), Size{1, 512}},
		{"memory alone", "", ann(AnnotationMemory, "268435456"), Size{1, 768}},
		{"capped at the host's CPUs", "", pod("100000", "6400000", "0", "0"), Size{8, 512}},
		{"capped at the maximum memory", "", pod("0", "0", "0", "1125899906842624"), Size{1, config.MaxMemoryMiB}},
		{"annotations win over the pause container's resources", "",
			&specs.Spec{Annotations: pod("100000", "100000", "2", "0").Annotations, Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 30)}}}},
			Size{2, 512}},
		{"static sizes too", config.ResourceStatic, pod("100000", "200000", "0", "1073741824"), Size{3, 1536}},
		{"hotplug starts at the defaults", config.ResourceHotplug, pod("100000", "200000", "0", "1073741824"), Size{1, 512}},

		// containerd 1.6, ctr, nerdctl: the container's own resources.
		{"no spec", "", nil, Size{1, 512}},
		{"no annotations nor resources", "", &specs.Spec{}, Size{1, 512}},
		{"container memory rounds up", "", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(128<<20 + 1)}}), Size{1, 512 + 129}},
		{"container quota rounds up", "", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)}}), Size{2, 512}},
		{"container unlimited quota", "", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}}), Size{1, 512}},
		{"container zero period ignored", "", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(1000), Period: u64(0)}}), Size{1, 512}},
		{"container huge memory capped", "", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 62)}}), Size{1, config.MaxMemoryMiB}},
		{"container many CPUs capped", "", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(64 * 100000), Period: u64(100000)}}), Size{8, 512}},
		{"container under hotplug", config.ResourceHotplug, withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 30)}}), Size{1, 512}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mode := tc.mode
			if mode == "" {
				mode = config.ResourceBoth
			}
			got, err := For(q, mode, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("For = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestForDefaultsAboveTheCap: the cap bounds what is added, never the
// configured defaults.
func TestForDefaultsAboveTheCap(t *testing.T) {
	withHostCPUs(t, 2)
	q := config.QEMU{DefaultVCPUs: 4, DefaultMemory: 512}
	got, err := For(q, config.ResourceBoth, pod("100000", "200000", "0", "0"))
	if err != nil || got != (Size{4, 512}) {
		t.Errorf("For = %+v, %v; want {4 512}", got, err)
	}
}

func TestForGarbage(t *testing.T) {
	q := config.QEMU{DefaultVCPUs: 1, DefaultMemory: 512}
	for _, tc := range []struct {
		name string
		spec *specs.Spec
		want []string // substrings of the error
	}{
		{"quota not a number", pod("100000", "two", "0", "0"), []string{AnnotationCPUQuota, `"two"`, "not a decimal integer"}},
		{"period not a number", pod("1e5", "200000", "0", "0"), []string{AnnotationCPUPeriod, `"1e5"`}},
		{"memory with a unit", pod("0", "0", "0", "1Gi"), []string{AnnotationMemory, `"1Gi"`}},
		{"empty memory", pod("0", "0", "0", ""), []string{AnnotationMemory, `""`}},
		{"shares not a number", pod("0", "0", "lots", "0"), []string{AnnotationCPUShares, `"lots"`}},
		{"negative quota", pod("100000", "-2", "0", "0"), []string{AnnotationCPUQuota, `"-2"`, "outside -1.."}},
		{"negative period", pod("-100000", "200000", "0", "0"), []string{AnnotationCPUPeriod, `"-100000"`}},
		{"negative memory", pod("0", "0", "0", "-4096"), []string{AnnotationMemory, `"-4096"`}},
		{"negative shares", pod("0", "0", "-2", "0"), []string{AnnotationCPUShares, `"-2"`}},
		{"period 0 with a quota", pod("0", "200000", "0", "0"), []string{AnnotationCPUPeriod, `"0"`, AnnotationCPUQuota, `"200000"`}},
		{"quota without a period", ann(AnnotationCPUQuota, "200000"), []string{AnnotationCPUPeriod, AnnotationCPUQuota}},
		{"period past a second", pod("2000000", "200000", "0", "0"), []string{AnnotationCPUPeriod, `"2000000"`}},
		{"absurd CPUs", pod("1000", "1000000000", "0", "0"), []string{AnnotationCPUQuota, "1000000 CPUs"}},
		{"absurd memory", pod("0", "0", "0", "9223372036854775807"), []string{AnnotationMemory, `"9223372036854775807"`}},
		{"overflowing memory", pod("0", "0", "0", "99999999999999999999"), []string{AnnotationMemory, "not a decimal integer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Refused in every mode: even hotplug must not run a pod
			// whose size it cannot read.
			for _, mode := range config.ResourceManagements {
				got, err := For(q, mode, tc.spec)
				if err == nil {
					t.Fatalf("%s: For accepted %v: %+v", mode, tc.spec.Annotations, got)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error %q does not contain %q", mode, err, w)
					}
				}
			}
		})
	}
}

func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		host int
		q    config.QEMU
		want Size
	}{
		{"host CPUs", 2, config.QEMU{}, Size{2, config.MaxMemoryMiB}},
		{"a guest has at most 255 vCPUs", 1000, config.QEMU{}, Size{hypervisor.MaxVCPUs, config.MaxMemoryMiB}},
		{"max_vcpus and max_memory", 8, config.QEMU{MaxVCPUs: 4, MaxMemory: 2048}, Size{4, 2048}},
		{"never below the defaults", 2, config.QEMU{DefaultVCPUs: 3, DefaultMemory: 1024, MaxMemory: 512}, Size{3, 1024}},
	} {
		withHostCPUs(t, tc.host)
		if got := Limits(tc.q); got != tc.want {
			t.Errorf("%s: %d host CPUs: Limits = %+v, want %+v", tc.name, tc.host, got, tc.want)
		}
	}
}
