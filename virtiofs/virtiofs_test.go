package virtiofs

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
)

func needVirtiofsd(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "virtiofsd and bind mounts need root")
	}
	if _, err := os.Stat(DefaultPath); err != nil {
		require.Missingf(t, "virtiofsd not installed: %v", err)
	}
}

func TestArgs(t *testing.T) {
	a := strings.Join(Config{SharedDir: "/s", Cache: CacheNone, ExtraArgs: []string{"-d"}}.args(), " ")
	for _, want := range []string{"--fd=3", "-o source=/s", "-o cache=none", "-o sandbox=namespace", "-o announce_submounts"} {
		if !strings.Contains(a, want) {
			t.Errorf("args %q lack %q", a, want)
		}
	}
	if !strings.HasSuffix(a, " -d") {
		t.Errorf("extra args not last: %q", a)
	}
}

func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{SocketPath: filepath.Join(dir, "s"), SharedDir: dir, Cache: "sometimes"}, "sometimes"},
		{Config{SharedDir: dir}, "required"},
		{Config{Path: filepath.Join(dir, "nope"), SocketPath: filepath.Join(dir, "s"), SharedDir: dir}, filepath.Join(dir, "nope")},
	}
	for _, c := range cases {
		if _, err := Start(ctx, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Start(%+v) error %v, want one containing %q", c.cfg, err, c.want)
		}
	}
}

// TestStartStop starts virtiofsd on a fresh directory and checks that the
// directory became a shared mount point, and that Stop removes everything.
// virtiofsd builds its mount namespace only once QEMU connects, so the
// propagation of later mounts into the guest is tested in package vm.
func TestStartStop(t *testing.T) {
	needVirtiofsd(t)
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	sock := filepath.Join(dir, "fs.sock")
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Start(ctx, Config{SocketPath: sock, SharedDir: shared})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(ctx)
	if st, err := os.Stat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %s: %v", sock, err)
	}
	if m, _ := mountinfo.GetMounts(mountinfo.SingleEntryFilter(shared)); len(m) != 1 || !isShared(m[0]) {
		t.Fatalf("shared directory is not a shared mount point: %+v", m)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(d.Pid()))); err != nil {
		t.Fatalf("virtiofsd not running: %v", err)
	}
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	default:
		t.Error("virtiofsd still running after Stop")
	}
	if m, _ := mountinfo.GetMounts(mountinfo.SingleEntryFilter(shared)); len(m) != 0 {
		t.Errorf("bind mount of the shared directory left behind: %+v", m)
	}
	leakcheck.NoDirs(t, sock)
	if err := d.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestKeepsExistingSharedMount: when the caller already made the directory
// a shared mount point, Start leaves it and Stop does not unmount it.
func TestKeepsExistingSharedMount(t *testing.T) {
	needVirtiofsd(t)
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	os.MkdirAll(shared, 0o755)
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}})
	if err := unix.Mount(shared, shared, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(shared, unix.MNT_DETACH)
	if err := unix.Mount("", shared, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Start(ctx, Config{SocketPath: filepath.Join(dir, "fs.sock"), SharedDir: shared})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ := mountinfo.GetMounts(mountinfo.SingleEntryFilter(shared)); len(m) != 1 {
		t.Errorf("caller's mount changed: %+v", m)
	}
	unix.Unmount(shared, 0)
}
