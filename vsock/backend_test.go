package vsock_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock"
	"github.com/vmpod/vmpod/vsock/internal/testdriver"
)

// memfdMappings counts this process's mappings of the test driver's
// guest memory.
func memfdMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "memfd:vsock-test-guest")
}

// TestBackendLifecycle drives a Backend through its socket with a fake
// QEMU, then closes it: the socket is gone, guest memory is unmapped and
// no goroutine is left.
func TestBackendLifecycle(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	t.Run("session", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "vsock.sock")
		b, err := vsock.NewBackend(path, 5)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		f := testdriver.Dial(t, path)
		f.Setup(2, 32)
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket still listening once QEMU connected: %v", err)
		}
		if n := memfdMappings(t); n != 2 {
			t.Fatalf("%d mappings of guest memory, want the test's and the backend's", n)
		}
		// A dial the silent guest never answers.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		if _, err := b.Dial(ctx, 1024); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("dial of a silent guest: %v", err)
		}
		cancel()
		l, err := b.Listen(99)
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan error, 1)
		go func() {
			_, err := l.Accept()
			accepted <- err
		}()
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if err := <-accepted; err == nil {
			t.Fatal("Accept succeeded on a closed backend")
		}
		if n := memfdMappings(t); n != 1 {
			t.Fatalf("%d mappings of guest memory after Close, want only the test's", n)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
