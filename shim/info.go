package shim

import (
	"fmt"
	"io"
	"slices"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runc/libcontainer/capabilities"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vmpod/vmpod/version"
)

// maxInfoOptions bounds the runtime options read from stdin for -info:
// containerd sends one small protobuf Any.
const maxInfoOptions = 1 << 20

// The type URL containerd 2.x registers for the runtime-spec features
// (core/runtime/typeurl.go) and unmarshals RuntimeInfo.Features by.
func init() {
	typeurl.Register(&features.Features{}, "types.containerd.io", "opencontainers/runtime-spec", fmt.Sprint(specs.VersionMajor), "features", "Features")
}

// Info answers containerd 2.x's `<shim> -info`: the runtime options come
// as a protobuf Any on stdin (possibly empty) and are echoed back, as
// runc's shim does. Nothing is started: the features describe what the
// guest agent's libcontainer (runc v1.5.2 on the guest kernel) does with a
// container's spec.
func Info(name string, options io.Reader) (*types.RuntimeInfo, error) {
	b, err := io.ReadAll(io.LimitReader(options, maxInfoOptions+1))
	if err != nil {
		return nil, fmt.Errorf("read runtime options from stdin: %w", err)
	}
	if len(b) > maxInfoOptions {
		return nil, fmt.Errorf("runtime options on stdin: more than %d bytes", maxInfoOptions)
	}
	info := &types.RuntimeInfo{
		Name:    name,
		Version: &types.RuntimeVersion{Version: version.Version},
	}
	if len(b) > 0 {
		var opts anypb.Any
		if err := proto.Unmarshal(b, &opts); err != nil {
			return nil, fmt.Errorf("runtime options on stdin: not a protobuf Any: %w", err)
		}
		info.Options = &opts
	}
	fb, err := typeurl.MarshalAny(Features())
	if err != nil {
		return nil, fmt.Errorf("marshal runtime features: %w", err)
	}
	info.Features = &anypb.Any{TypeUrl: fb.GetTypeUrl(), Value: fb.GetValue()}
	return info, nil
}

// knownMountOptions and knownNamespaces are runc v1.5.2's
// specconv.KnownMountOptions and KnownNamespaces, what the agent's
// libcontainer accepts. specconv itself needs cgo, and the shim is built
// without (Makefile); TestFeaturesMatchLibcontainer keeps them equal.
var (
	knownMountOptions = []string{"async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid", "nosymfollow", "private", "ratime", "rbind", "rdev", "rdiratime", "relatime", "remount", "rexec", "rnoatime", "rnodev", "rnodiratime", "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate", "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow", "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid", "symfollow", "sync", "tmpcopyup", "unbindable"}
	knownNamespaces   = []string{"cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"}
)

// Features is what `runc features` says (runc's features.go), less what
// does not hold in a vmpod guest: no cgroup v1 or systemd cgroup driver
// (the guest has a pure cgroup v2 and no systemd), no AppArmor, SELinux,
// Intel RDT or net devices, no claim about memory policies (the guest
// kernel 6.1 lacks some of runc's modes), and no idmapped mounts (the
// guest's virtio-fs does not support them, so MountExtensions.IDMap is
// false — which also keeps containerd's CRI from reporting user namespaces
// for the handler, as it requires both). Recursive mount attributes ("rro"
// and the like) are applied by libcontainer with mount_setattr in the
// guest; user namespaces are set up there too. Seccomp is built into the
// agent (AGENT_TAGS in the Makefile); the filter flags the guest's
// libseccomp supports are not known on the host, so SupportedFlags is
// left out.
func Features() *features.Features {
	t, f := true, false
	return &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		MountOptions:  slices.Clone(knownMountOptions),
		Linux: &features.Linux{
			Namespaces:   slices.Clone(knownNamespaces),
			Capabilities: capabilities.KnownCapabilities(),
			Cgroup: &features.Cgroup{
				V1:          &f,
				V2:          &t,
				Systemd:     &f,
				SystemdUser: &f,
				Rdma:        &f,
			},
			Seccomp: &features.Seccomp{
				Enabled:    &t,
				Actions:    seccomp.KnownActions(),
				Operators:  seccomp.KnownOperators(),
				Archs:      seccomp.KnownArchs(),
				KnownFlags: seccomp.KnownFlags(),
			},
			Apparmor: &features.Apparmor{Enabled: &f},
			Selinux:  &features.Selinux{Enabled: &f},
			IntelRdt: &features.IntelRdt{Enabled: &f},
			MountExtensions: &features.MountExtensions{
				IDMap: &features.IDMap{Enabled: &f},
			},
			NetDevices: &features.NetDevices{Enabled: &f},
		},
	}
}
