package jail

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// holderEnv makes the test binary a process that allocates from the lock
// directory it names, prints the uid and waits to be killed.
const holderEnv = "VMPOD_JAIL_TEST_HOLDER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holderEnv); dir != "" {
		id, err := Range{LockDir: dir, Start: 5000, Count: 4}.Allocate(context.Background())
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(id.UID)
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testRange(t *testing.T, count uint32) Range {
	t.Helper()
	// Nothing runs with these ids on a test machine; the scan is tested
	// on its own.
	old := inUse
	inUse = func(uint32) (bool, error) { return false, nil }
	t.Cleanup(func() { inUse = old })
	return Range{LockDir: filepath.Join(t.TempDir(), "jail"), Start: 5000, Count: count}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) > 0 {
		t.Errorf("lock directory %s holds %v after release", dir, ents)
	}
}

func TestAllocationsDifferAndReleaseFreesTheUID(t *testing.T) {
	r := testRange(t, 4)
	a, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if a.UID == b.UID {
		t.Fatalf("two allocations share uid %d", a.UID)
	}
	for _, id := range []*ID{a, b} {
		if id.UID < 5000 || id.UID >= 5004 || id.GID != id.UID {
			t.Errorf("allocated %d:%d, want a uid in [5000, 5004) and gid = uid", id.UID, id.GID)
		}
	}
	st, err := os.Stat(r.LockDir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("lock directory: %v, mode %v; want 0700", err, st.Mode().Perm())
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(); err != nil {
		t.Errorf("second release: %v", err)
	}
	c, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != a.UID {
		t.Errorf("released uid %d not reused; got %d", a.UID, c.UID)
	}
	b.Release()
	c.Release()
	assertEmpty(t, r.LockDir)
}

func TestExhaustionNamesTheRange(t *testing.T) {
	r := testRange(t, 2)
	var ids []*ID
	for i := 0; i < 2; i++ {
		id, err := r.Allocate(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	_, err := r.Allocate(ctx(t))
	if err == nil || !strings.Contains(err.Error(), "[5000, 5002)") || !strings.Contains(err.Error(), r.LockDir) {
		t.Fatalf("error %v, want one naming the range [5000, 5002) and %s", err, r.LockDir)
	}
	for _, id := range ids {
		id.Release()
	}
	assertEmpty(t, r.LockDir)
}

// A lock file whose holder closed it (as when the holder exits) is free,
// although the file is still there.
func TestClosedHolderFreesTheUID(t *testing.T) {
	r := testRange(t, 1)
	a, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	a.f.Close() // not Release: the file stays, unlocked
	b, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatalf("a closed holder's uid is not free: %v", err)
	}
	if b.UID != a.UID {
		t.Errorf("got uid %d, want the freed %d", b.UID, a.UID)
	}
	b.Release()
	assertEmpty(t, r.LockDir)
}

// A holder killed outright frees its uid: the kernel drops its flock.
func TestKilledHolderFreesTheUID(t *testing.T) {
	r := testRange(t, 1)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+r.LockDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("holder: %v", err)
	}
	held, err := strconv.ParseUint(strings.TrimSpace(line), 10, 32)
	if err != nil {
		t.Fatalf("holder said %q", line)
	}
	if _, err := r.Allocate(ctx(t)); err == nil {
		t.Fatal("allocated the uid a live holder has")
	}
	cmd.Process.Kill()
	cmd.Wait()
	id, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatalf("the killed holder's uid is not free: %v", err)
	}
	if uint64(id.UID) != held {
		t.Errorf("got uid %d, want the killed holder's %d", id.UID, held)
	}
	id.Release()
	assertEmpty(t, r.LockDir)
}

// A uid some process runs with is skipped even though its lock is free.
func TestUIDInUseIsSkipped(t *testing.T) {
	r := testRange(t, 3)
	inUse = func(uid uint32) (bool, error) { return uid == 5000, nil }
	id, err := r.Allocate(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if id.UID != 5001 {
		t.Errorf("got uid %d, want 5001 (5000 is in use)", id.UID)
	}
	id.Release()
	// The busy uid's file stays, unlocked: harmless and reused later.
	ents, _ := os.ReadDir(r.LockDir)
	if len(ents) != 1 || ents[0].Name() != "5000.lock" {
		t.Errorf("lock directory holds %v, want only 5000.lock", ents)
	}
}

// A lock taken on a file that was unlinked meanwhile guards nothing.
func TestSamePathDetectsReplacedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "7.lock")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if same, err := samePath(f, path); err != nil || !same {
		t.Fatalf("samePath on the file itself: %v, %v", same, err)
	}
	os.Remove(path)
	if same, err := samePath(f, path); err != nil || same {
		t.Errorf("samePath after unlink: %v, %v; want false", same, err)
	}
	g, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if same, err := samePath(f, path); err != nil || same {
		t.Errorf("samePath after replace: %v, %v; want false", same, err)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		r    Range
		want string
	}{
		{Range{Start: 0, Count: 1}, "start 0"},
		{Range{Start: 1, Count: 0}, "count 0"},
		{Range{Start: 4294967295, Count: 1}, "includes 4294967295, which is not a uid"},
		{Range{Start: 4294901760, Count: 65535}, ""},
		{Range{Start: 4294901760, Count: 65536}, "4294967296"},
		{Range{Start: 1, Count: 1, LockDir: "run/jail"}, "not absolute"},
	} {
		err := c.r.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.r, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one containing %q", c.r, err, c.want)
		}
	}
	if _, err := (Range{Start: 0, Count: 1}).Allocate(context.Background()); err == nil {
		t.Error("Allocate accepted an invalid range")
	}
}

func TestAllocateHonoursContext(t *testing.T) {
	r := testRange(t, 2)
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Allocate(c); err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("error %v, want the context's", err)
	}
}

func TestUIDInUseScansProcesses(t *testing.T) {
	busy, err := uidInUse(uint32(os.Getuid()))
	if err != nil || !busy {
		t.Errorf("own uid %d: in use %v, %v; want true", os.Getuid(), busy, err)
	}
	status := []byte("Name:\tqemu\nUid:\t10\t20\t30\t40\nGid:\t50\t60\t70\t80\nGroups:\t90\n")
	for id, want := range map[uint32]bool{10: true, 40: true, 70: true, 90: false, 1: false, 0: false} {
		if got := statusHasID(status, id); got != want {
			t.Errorf("statusHasID(%d) = %v, want %v", id, got, want)
		}
	}
	for text, want := range map[string]bool{"State:\tZ (zombie)\n": true, "State:\tS (sleeping)\n": false, "Name:\tx\n": false} {
		if got := zombie([]byte(text)); got != want {
			t.Errorf("zombie(%q) = %v, want %v", text, got, want)
		}
	}
}

// BenchmarkAllocateRelease is what the jail adds to a VM's start and stop:
// a lock file, and a scan of every process's ids.
func BenchmarkAllocateRelease(b *testing.B) {
	r := Range{LockDir: filepath.Join(b.TempDir(), "jail"), Start: DefaultUIDStart + DefaultUIDCount, Count: 16}
	for i := 0; i < b.N; i++ {
		id, err := r.Allocate(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := id.Release(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestReclaim(t *testing.T) {
	dir := t.TempDir()
	r := Range{LockDir: dir, Start: 4000000000, Count: 2}
	held, err := r.Allocate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Held by a live owner: kept.
	if err := Reclaim(dir, held.UID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(held.LockPath()); err != nil {
		t.Fatalf("Reclaim removed a held lock: %v", err)
	}
	// The owner died without releasing (its descriptor closed): removed.
	held.f.Close()
	held.f = nil
	if err := Reclaim(dir, held.UID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(held.LockPath()); !os.IsNotExist(err) {
		t.Fatalf("lock of a dead owner not reclaimed: %v", err)
	}
	// Nothing there: nothing made.
	if err := Reclaim(dir, held.UID+1); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("lock directory holds %v", ents)
	}
}
