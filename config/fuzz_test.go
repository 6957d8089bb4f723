package config

import (
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the parser: it must return a valid
// configuration or an error, never panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte(twoKeys))
	f.Add([]byte("[hypervisor.qemu]\ndefault_memory = -1\n"))
	f.Add([]byte("[hypervisor.qemu]\nkernel_params = [\"a\", 1]\n"))
	f.Add([]byte("[agent]\ndial_timeout = \"1h\"\n"))
	f.Add([]byte("hypervisor = { qemu = { default_vcpus = 4 } }\n"))
	f.Add([]byte("[[runtime]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parse(data, "fuzz.toml")
		if err != nil {
			return
		}
		q := cfg.Hypervisor.QEMU
		if q.DefaultVCPUs < 1 || q.DefaultVCPUs > MaxVCPUs || q.DefaultMemory < MinMemoryMiB || q.DefaultMemory > MaxMemoryMiB {
			t.Errorf("accepted out-of-range sizes: %+v", q)
		}
		if d := cfg.Agent.DialTimeout.Duration; d <= 0 || d > MaxDialTimeout {
			t.Errorf("accepted dial_timeout %s", d)
		}
		if cfg.Source != "fuzz.toml" {
			t.Errorf("Source = %q", cfg.Source)
		}
	})
}
