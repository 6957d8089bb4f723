// Package rootfs puts a container's root filesystem and its bind mounts into
// the sandbox's shared directory, which virtio-fs exports to the guest, and
// rewrites the container's OCI spec so the guest finds them there.
//
// Layout under the shared directory:
//
//	<shared>/<container-id>/rootfs      the rootfs mounts containerd passed in Create
//	<shared>/<container-id>/mounts/<n>  the spec's n-th mount, when it is a bind mount
//
// The mounts are made in the sandbox's mount namespace (Layout.NS; see
// internal/mountns), which virtiofsd shares, never in the host's.
// Everything is undone by Remove, which unmounts whatever lies under the
// container's directory; after a crashed shim that namespace is gone with
// its mounts, and Remove only removes the directories.
package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/containerd/mount"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/mountns"
)

// Layout names the directories of one container in a sandbox.
type Layout struct {
	// HostDir is <shared>/<container-id> on the host.
	HostDir string
	// GuestDir is the same directory as the guest sees it.
	GuestDir string
	// NS is the mount namespace the mounts go in; nil: the caller's.
	NS *mountns.NS
}

// NewLayout returns the layout of container id in a shared directory that the
// guest sees at guestShared.
func NewLayout(hostShared, guestShared, id string) (Layout, error) {
	if err := ValidID(id); err != nil {
		return Layout{}, err
	}
	return Layout{
		HostDir:  filepath.Join(hostShared, id),
		GuestDir: filepath.Join(guestShared, id),
	}, nil
}

// ValidID rejects ids that could escape the shared directory.
func ValidID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") || len(id) > 255 {
		return fmt.Errorf("invalid container id %q", id)
	}
	return nil
}

// HostRootfs is where the rootfs is mounted on the host.
func (l Layout) HostRootfs() string { return filepath.Join(l.HostDir, "rootfs") }

// GuestRootfs is where the guest finds the rootfs.
func (l Layout) GuestRootfs() string { return filepath.Join(l.GuestDir, "rootfs") }

func (l Layout) hostMount(n int) string {
	return filepath.Join(l.HostDir, "mounts", strconv.Itoa(n))
}

func (l Layout) guestMount(n int) string {
	return filepath.Join(l.GuestDir, "mounts", strconv.Itoa(n))
}

// MountRootfs mounts containerd's rootfs mounts at HostRootfs. With no
// mounts (a bundle that carries its own rootfs), it bind-mounts the spec's
// root path, relative to bundle when not absolute.
func (l Layout) MountRootfs(ctx context.Context, mounts []mount.Mount, bundle string, spec *specs.Spec) error {
	target := l.HostRootfs()
	if len(mounts) > 0 {
		return l.NS.Do(func() error {
			if err := os.MkdirAll(target, 0o711); err != nil {
				return fmt.Errorf("create rootfs directory %s: %w", target, err)
			}
			if err := mount.All(mounts, target); err != nil {
				return fmt.Errorf("mount rootfs at %s: %w", target, err)
			}
			log.G(ctx).WithField("target", target).Debug("mounted rootfs")
			return nil
		})
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return fmt.Errorf("container has neither rootfs mounts nor root.path in its spec")
	}
	src := spec.Root.Path
	if !filepath.IsAbs(src) {
		src = filepath.Join(bundle, src)
	}
	if err := l.bind(specs.Mount{Source: src, Options: []string{"rbind"}}, target); err != nil {
		return fmt.Errorf("mount rootfs at %s: %w", target, err)
	}
	log.G(ctx).WithField("target", target).Debug("mounted rootfs")
	return nil
}

// isBind reports whether an OCI mount is a bind mount of a host path, which
// must reach the guest through the shared directory. Everything else (proc,
// sysfs, tmpfs, devpts, mqueue, cgroup) the guest provides itself.
func isBind(m specs.Mount) bool {
	if m.Type == "bind" || m.Type == "rbind" {
		return true
	}
	if m.Type != "" && m.Type != "none" {
		return false
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// BindMounts bind-mounts the host sources of the spec's bind mounts into the
// shared directory and rewrites spec so that each such mount's source is the
// guest path. Options (ro, rbind, propagation) are kept for the guest's own
// bind mount; a read-only mount is also read-only on the host side, so the
// guest cannot write through virtio-fs.
func (l Layout) BindMounts(ctx context.Context, spec *specs.Spec) error {
	mounts := make([]specs.Mount, 0, len(spec.Mounts))
	for i, m := range spec.Mounts {
		if !isBind(m) {
			mounts = append(mounts, m)
			continue
		}
		if !filepath.IsAbs(m.Source) {
			return fmt.Errorf("bind mount %d (%s): source %q is not absolute", i, m.Destination, m.Source)
		}
		target := l.hostMount(i)
		if err := l.bind(m, target); err != nil {
			return fmt.Errorf("bind mount %d: %s onto %s: %w", i, m.Source, m.Destination, err)
		}
		guest := m
		guest.Source = l.guestMount(i)
		mounts = append(mounts, guest)
		log.G(ctx).WithFields(log.Fields{"source": m.Source, "guest": guest.Source}).Debug("shared bind mount")
		var sub []specs.Mount
		err := l.NS.Do(func() (err error) {
			sub, err = submountBinds(guest, target)
			return err
		})
		if err != nil {
			return fmt.Errorf("bind mount %d (%s): %w", i, m.Destination, err)
		}
		mounts = append(mounts, sub...)
	}
	spec.Mounts = mounts
	return nil
}

// submountBinds returns a bind of its own for each mount below the host
// side of a read-only recursive bind (target), with that mount's own
// read-only flag. In the guest, virtio-fs shows such submounts as
// automounts that take the flags of the mount they are first reached
// through: through the container's read-only bind they would all be
// read-only, where runc's "ro" leaves submounts as they are (only
// "rro" is recursive). Reached through the writable shared directory
// and bound in after their parent, they keep their own.
func submountBinds(m specs.Mount, target string) ([]specs.Mount, error) {
	if !hasOption(m.Options, "ro") || !hasOption(m.Options, "rbind") {
		return nil, nil
	}
	infos, err := mountsUnder(target)
	if err != nil {
		return nil, err
	}
	sort.Slice(infos, func(a, b int) bool { return infos[a].Mountpoint < infos[b].Mountpoint })
	var out []specs.Mount
	for _, info := range infos {
		rel, err := filepath.Rel(target, info.Mountpoint)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			continue
		}
		mode := "rw"
		if hasOption(strings.Split(info.Options, ","), "ro") {
			mode = "ro"
		}
		out = append(out, specs.Mount{
			Destination: path.Join(m.Destination, rel),
			Type:        "bind",
			Source:      path.Join(m.Source, rel),
			Options:     []string{"rbind", mode},
		})
	}
	return out, nil
}

func hasOption(opts []string, o string) bool {
	for _, v := range opts {
		if v == o {
			return true
		}
	}
	return false
}

// bind binds m.Source onto target in the layout's mount namespace. The
// source is cloned in the caller's namespace (the host's), with open_tree,
// and the clone attached in the sandbox's: the host's mounts at and below
// the source are what the guest gets, even those the host made after the
// sandbox's namespace was copied from it (a volume's own mount, made just
// before the container, on a host whose / has private propagation), and
// the clone keeps the source's propagation, so later host mounts below it
// keep arriving when the host's mount is shared.
func (l Layout) bind(m specs.Mount, target string) error {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
	ro, rro := false, false
	for _, o := range m.Options {
		switch o {
		case "rbind":
			flags |= unix.AT_RECURSIVE
		case "ro":
			ro = true
		case "rro":
			rro = true
		}
	}
	fi, err := os.Stat(m.Source)
	if err != nil {
		return err
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, m.Source, flags)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", m.Source, err)
	}
	defer unix.Close(fd)
	return l.NS.Do(func() error {
		if err := os.MkdirAll(filepath.Dir(target), 0o711); err != nil {
			return err
		}
		if fi.IsDir() {
			err = os.Mkdir(target, 0o755)
		} else {
			var f *os.File
			f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err == nil {
				err = f.Close()
			}
		}
		if err != nil {
			return err
		}
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("move_mount onto %s: %w", target, err)
		}
		// A clone of a shared mount is the host's peer: a slave, it still
		// receives the host's mounts, and nothing goes back.
		if err := unix.Mount("", target, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
			return fmt.Errorf("make %s a slave of the host's mount: %w", target, err)
		}
		if ro {
			rflags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
			if flags&unix.AT_RECURSIVE != 0 {
				rflags |= unix.MS_REC
			}
			if err := unix.Mount("", target, "", rflags, ""); err != nil {
				_ = unix.Unmount(target, unix.MNT_DETACH)
				return fmt.Errorf("remount read-only: %w", err)
			}
		}
		// "rro" (containerd 2.x's recursive read-only mounts) is applied by
		// the guest's libcontainer with mount_setattr; the host side of the
		// share is made recursively read-only too, so that the guest cannot
		// write through virtio-fs into any of its submounts either.
		if rro {
			attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(-1, target, unix.AT_RECURSIVE, &attr); err != nil {
				_ = unix.Unmount(target, unix.MNT_DETACH)
				return fmt.Errorf("make recursively read-only (mount_setattr): %w", err)
			}
		}
		return nil
	})
}

// Remove unmounts everything under dir in the mount namespace ns (nil:
// the caller's), deepest first (lazily when a mount is busy), then removes
// dir. It is safe on a partly built or already removed directory.
// A namespace already closed (the sandbox stopped) took its mounts with
// it: only the directories are left to remove.
func Remove(ctx context.Context, ns *mountns.NS, dir string) error {
	remove := func() error {
		if err := UnmountUnder(ctx, dir); err != nil {
			return err
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
		return nil
	}
	err := ns.Do(remove)
	if errors.Is(err, mountns.ErrClosed) {
		return remove()
	}
	return err
}

// mountsUnder lists the mounts at or below dir in the calling thread's
// mount namespace.
func mountsUnder(dir string) ([]*mountinfo.Info, error) {
	f, err := os.Open(mountns.MountinfoPath)
	if err != nil {
		return nil, fmt.Errorf("read mounts under %s: %w", dir, err)
	}
	defer f.Close()
	infos, err := mountinfo.GetMountsFromReader(f, mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read mounts under %s: %w", dir, err)
	}
	return infos, nil
}

// UnmountUnder unmounts every mount point at or below dir, deepest first,
// in the calling thread's mount namespace.
func UnmountUnder(ctx context.Context, dir string) error {
	dir = filepath.Clean(dir)
	infos, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	points := make([]string, 0, len(infos))
	for _, m := range infos {
		points = append(points, m.Mountpoint)
	}
	// Deepest first; a path repeats when mounts are stacked, and each
	// unmount removes one layer.
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			log.G(ctx).WithError(err).WithField("path", p).Debug("unmount failed, detaching")
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}
