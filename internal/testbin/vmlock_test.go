package testbin

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVMLockExcludes takes the lock twice, as two test packages would (two
// open files: flock locks belong to the open file): the second waits while
// the first holds it, gives up at its bound, and gets it once released.
func TestVMLockExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.lock")
	unlock, err := lockVMs(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if u, err := lockVMs(path, 500*time.Millisecond); err == nil {
		u()
		t.Fatal("took the lock while another holder had it")
	} else if !strings.Contains(err.Error(), "still held") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v: want one naming %s, still held", err, path)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("gave up after %s, before its bound", d)
	}
	got := make(chan error, 1)
	go func() {
		u, err := lockVMs(path, 5*time.Second)
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("second holder returned (%v) while the first still held the lock", err)
	default:
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the lock was not taken after its release")
	}
}
