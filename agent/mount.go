package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	agentpb "github.com/vmpod/vmpod/proto"
	"golang.org/x/sys/unix"
)

// mountSpec is a validated agentpb.Mount, ready for mount(2).
type mountSpec struct {
	Type, Source, Target string
	Flags                uintptr // mount flags, without propagation
	Propagation          uintptr // MS_SHARED, MS_SLAVE, MS_PRIVATE (| MS_REC) or 0
	Data                 string
}

// mountFlags are the mount(8) options that map to flags: set or clear.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"defaults":      {false, 0},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"nosuid":        {false, unix.MS_NOSUID},
	"suid":          {true, unix.MS_NOSUID},
	"nodev":         {false, unix.MS_NODEV},
	"dev":           {true, unix.MS_NODEV},
	"noexec":        {false, unix.MS_NOEXEC},
	"exec":          {true, unix.MS_NOEXEC},
	"sync":          {false, unix.MS_SYNCHRONOUS},
	"async":         {true, unix.MS_SYNCHRONOUS},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"noatime":       {false, unix.MS_NOATIME},
	"atime":         {true, unix.MS_NOATIME},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"diratime":      {true, unix.MS_NODIRATIME},
	"relatime":      {false, unix.MS_RELATIME},
	"norelatime":    {true, unix.MS_RELATIME},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"bind":          {false, unix.MS_BIND},
	"rbind":         {false, unix.MS_BIND | unix.MS_REC},
}

var propagationFlags = map[string]uintptr{
	"private":  unix.MS_PRIVATE,
	"rprivate": unix.MS_PRIVATE | unix.MS_REC,
	"shared":   unix.MS_SHARED,
	"rshared":  unix.MS_SHARED | unix.MS_REC,
	"slave":    unix.MS_SLAVE,
	"rslave":   unix.MS_SLAVE | unix.MS_REC,
}

// ParseMount validates m and splits its options into flags and data.
func ParseMount(m *agentpb.Mount) (mountSpec, error) {
	if m == nil {
		return mountSpec{}, fmt.Errorf("mount: missing: %w", errdefs.ErrInvalidArgument)
	}
	if err := validateGuestPath("mount target", m.Target); err != nil {
		return mountSpec{}, err
	}
	ms := mountSpec{Type: m.Type, Source: m.Source, Target: m.Target}
	if len(m.Source) > maxStringLen || len(m.Type) > 64 || strings.ContainsRune(m.Source+m.Type, 0) {
		return mountSpec{}, fmt.Errorf("mount %s: bad source or type: %w", m.Target, errdefs.ErrInvalidArgument)
	}
	if len(m.Options) > maxMountOptions {
		return mountSpec{}, fmt.Errorf("mount %s: %d options, more than %d: %w", m.Target, len(m.Options), maxMountOptions, errdefs.ErrInvalidArgument)
	}
	var data []string
	for _, o := range m.Options {
		if o == "" || len(o) > maxStringLen || strings.ContainsAny(o, ",\x00") {
			return mountSpec{}, fmt.Errorf("mount %s: bad option %q: %w", m.Target, o, errdefs.ErrInvalidArgument)
		}
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				ms.Flags &^= f.flag
			} else {
				ms.Flags |= f.flag
			}
			continue
		}
		if p, ok := propagationFlags[o]; ok {
			ms.Propagation = p
			continue
		}
		data = append(data, o)
	}
	ms.Data = strings.Join(data, ",")
	if ms.Type == "" && ms.Flags&unix.MS_BIND == 0 {
		return mountSpec{}, fmt.Errorf("mount %s: no type and not a bind mount: %w", m.Target, errdefs.ErrInvalidArgument)
	}
	return ms, nil
}

// ParseMounts validates a list of mounts.
func ParseMounts(ms []*agentpb.Mount) ([]mountSpec, error) {
	if len(ms) > maxMounts {
		return nil, fmt.Errorf("%d mounts, more than %d: %w", len(ms), maxMounts, errdefs.ErrInvalidArgument)
	}
	out := make([]mountSpec, 0, len(ms))
	for _, m := range ms {
		s, err := ParseMount(m)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// mount performs ms, creating the target directory when missing. A
// read-only bind mount needs a second, remounting call.
func (ms mountSpec) mount() error {
	if err := os.MkdirAll(ms.Target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", ms.Target, err)
	}
	flags := ms.Flags
	bind := flags&unix.MS_BIND != 0
	if bind {
		flags &^= unix.MS_RDONLY
	}
	if err := unix.Mount(ms.Source, ms.Target, ms.Type, flags, ms.Data); err != nil {
		return fmt.Errorf("mount %s on %s (type %q): %w", ms.Source, ms.Target, ms.Type, err)
	}
	if bind && ms.Flags&unix.MS_RDONLY != 0 {
		if err := unix.Mount("", ms.Target, "", ms.Flags|unix.MS_REMOUNT, ""); err != nil {
			_ = unmount(ms.Target)
			return fmt.Errorf("remount %s read-only: %w", ms.Target, err)
		}
	}
	if ms.Propagation != 0 {
		if err := unix.Mount("", ms.Target, "", ms.Propagation, ""); err != nil {
			_ = unmount(ms.Target)
			return fmt.Errorf("set propagation of %s: %w", ms.Target, err)
		}
	}
	return nil
}

// mountAll performs mounts in order; on failure it undoes what it did.
func mountAll(mounts []mountSpec) error {
	for i, m := range mounts {
		if err := m.mount(); err != nil {
			_ = unmountAll(mounts[:i])
			return err
		}
	}
	return nil
}

// unmountAll undoes mounts in reverse order and returns the first error.
func unmountAll(mounts []mountSpec) error {
	var first error
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := unmount(mounts[i].Target); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// unmount removes the mount on target; a busy mount is detached so that it
// goes away once its last user does.
func unmount(target string) error {
	err := unix.Unmount(target, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(target, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
