package agent

import (
	"testing"

	agentpb "github.com/vmpod/vmpod/proto"
)

// The spec conversion is the path from untrusted bytes into libcontainer:
// it must return a config or an error, never panic.
func FuzzContainerConfig(f *testing.F) {
	f.Add("c1", exampleSpec(f, nil), "/run/rootfs", false)
	f.Add("c1", []byte(`{"process":{"args":["sh"],"cwd":"/"}}`), "/r", true)
	f.Add("c1", []byte(`{"process":{"args":["sh"],"cwd":"/"},"mounts":[{"destination":"x","type":"bind","source":"/","options":["rbind","idmap"]}]}`), "/r", false)
	f.Add("c1", []byte(`{"process":{"args":["sh"],"cwd":"/"},"linux":{"namespaces":[{"type":"user"}],"uidMappings":[{"containerID":0,"hostID":1000,"size":0}]}}`), "/r", false)
	f.Add("x", []byte(`{"process":{"args":["sh"],"cwd":"/"},"linux":{"resources":{"devices":[{"allow":true,"type":"q"}]},"seccomp":{"defaultAction":"SCMP_ACT_X"}}}`), "/", false)
	f.Add("c2", []byte(`{"process":{"args":["sh"],"cwd":"/"},"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"listenerPath":"/s","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY","args":[{"index":1,"value":2,"op":"SCMP_CMP_EQ"}]}]}}}`), "/r", false)
	f.Fuzz(func(t *testing.T, id string, spec []byte, rootfs string, noPivot bool) {
		cfg, s, err := ContainerConfig(id, spec, rootfs, noPivot)
		if err == nil && (cfg == nil || s == nil || cfg.Rootfs != rootfs) {
			t.Fatalf("accepted without a config for rootfs %q", rootfs)
		}
	})
}

func FuzzDecodeProcess(f *testing.F) {
	f.Add([]byte(`{"args":["sh"],"cwd":"/","user":{"uid":1000,"additionalGids":[1]},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}]}`))
	f.Add([]byte(`{"args":["sh"],"cwd":"/","execCPUAffinity":{"initial":"0-3","final":"x"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeProcess(b)
		if err != nil {
			return
		}
		if _, err := newProcess(p); err != nil {
			return
		}
	})
}

func FuzzDecodeResources(f *testing.F) {
	f.Add([]byte(`{"memory":{"limit":1},"cpu":{"shares":2,"quota":-1},"pids":{"limit":3},"blockIO":{"weight":10},"unified":{"a":"b"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResources(b)
		if err != nil {
			return
		}
		cfg, _, err := ContainerConfig("c", exampleSpec(t, nil), "/r", false)
		if err != nil {
			t.Fatal(err)
		}
		applyResources(cfg.Cgroups.Resources, r)
	})
}

func FuzzParseMount(f *testing.F) {
	f.Add("tmpfs", "tmpfs", "/run/x", "ro,nosuid,size=1m,rshared")
	f.Add("", "/a", "/b", "rbind,ro")
	f.Fuzz(func(t *testing.T, typ, source, target, options string) {
		var opts []string
		for i, start := 0, 0; i <= len(options); i++ {
			if i == len(options) || options[i] == ';' {
				opts = append(opts, options[start:i])
				start = i + 1
			}
		}
		ms, err := ParseMount(&agentpb.Mount{Type: typ, Source: source, Target: target, Options: opts})
		if err == nil && ms.Target != target {
			t.Fatalf("target changed: %q → %q", target, ms.Target)
		}
	})
}

func FuzzValidators(f *testing.F) {
	f.Add("abc", "/a/b", "host")
	f.Fuzz(func(t *testing.T, id, path string, host string) {
		checkMatchersAgree(t, id)
		checkMatchersAgree(t, host)
		_ = validateExecID(id)
		_ = validateGuestPath("p", path)
		_, _ = resolvConf(&agentpb.DNS{Nameservers: []string{id}, Searches: []string{path}, Options: []string{host}})
	})
}
