// Package pid1 does what the guest's init must do before the agent serves:
// mount the kernel file systems, enable the cgroup v2 controllers, load the
// image's boot modules, point the kernel's module helper at the image's
// modprobe (for modules loaded on demand), and power the VM off at the end. It only runs
// when vmpod-agent is PID 1; orphan reaping is the agent's Reaper, which
// must cooperate with libcontainer's own waits.
package pid1

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/kmod"
)

// IsInit reports whether this process is the guest's init.
func IsInit() bool { return os.Getpid() == 1 }

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// mounts are the guest's kernel file systems, in order.
var mounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// Setup prepares the guest: mounts, cgroup controllers and modules.
func Setup(ctx context.Context) error {
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.target, err)
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	if err := EnableControllers("/sys/fs/cgroup"); err != nil {
		return err
	}
	// The image's name until the host gives the sandbox's (SetHostname).
	if err := unix.Sethostname([]byte(bootHostname())); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	dir, err := kmod.ModulesDir()
	if err != nil {
		return err
	}
	if err := kmod.LoadListed(kmod.ListPath, dir); err != nil {
		return fmt.Errorf("load modules: %w", err)
	}
	return SetModuleHelper(ModprobeSysctl, kmod.HelperPath)
}

// ModprobeSysctl is the kernel's module helper setting.
const ModprobeSysctl = "/proc/sys/kernel/modprobe"

// SetModuleHelper makes helper the program the kernel runs to load a
// module (sysctl is ModprobeSysctl), unless it already is. A kernel
// without module support has no such setting, which is not an error.
func SetModuleHelper(sysctl, helper string) error {
	b, err := os.ReadFile(sysctl)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("module helper: %w", err)
	}
	if strings.TrimSpace(string(b)) == helper {
		return nil
	}
	if err := os.WriteFile(sysctl, []byte(helper), 0o644); err != nil {
		return fmt.Errorf("module helper: write %q to %s: %w", helper, sysctl, err)
	}
	return nil
}

// RootIsInitramfs reports whether / is the kernel's initial root file
// system (an initramfs), which pivot_root cannot move away from (EINVAL).
// There containers enter their root with MS_MOVE and chroot instead, as
// Kata's agent does on an initrd; the VM is the pod's isolation boundary.
func RootIsInitramfs() bool {
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && rootFSType(string(b)) == "rootfs" {
		return true
	}
	var st unix.Statfs_t
	return unix.Statfs("/", &st) == nil && st.Type == unix.RAMFS_MAGIC
}

// rootFSType returns the file system type of / in a mountinfo text.
func rootFSType(mountinfo string) string {
	fstype := ""
	for _, line := range strings.Split(mountinfo, "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source options
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != "/" {
			continue
		}
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" {
				fstype = f[i+1] // the last mount on / is the visible one
				break
			}
		}
	}
	return fstype
}

// bootHostname is /etc/hostname of the image, or "localhost".
func bootHostname() string {
	b, err := os.ReadFile("/etc/hostname")
	if h := strings.TrimSpace(string(b)); err == nil && h != "" && len(h) <= 64 {
		return h
	}
	return "localhost"
}

// EnableControllers delegates every controller of the cgroup v2 root to
// its children, where the containers' cgroups live.
func EnableControllers(root string) error {
	b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup controllers: %w", err)
	}
	var enable []string
	for _, c := range strings.Fields(string(b)) {
		enable = append(enable, "+"+c)
	}
	if len(enable) == 0 {
		return nil
	}
	path := filepath.Join(root, "cgroup.subtree_control")
	if err := os.WriteFile(path, []byte(strings.Join(enable, " ")), 0o644); err != nil {
		return fmt.Errorf("write %q to %s: %w", strings.Join(enable, " "), path, err)
	}
	return nil
}

// PowerOff stops the VM. Init must never exit: the kernel would panic.
func PowerOff(ctx context.Context) {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		log.G(ctx).WithError(err).Error("power off")
	}
	select {} // unreachable unless reboot failed; still do not exit
}
