package vsock_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestVMEcho(t *testing.T) {
	vm := startVM(t)
	c := vm.dial(t, portEcho)
	defer c.Close()
	msg := []byte("hello, guest\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(msg) {
		t.Fatalf("echo %q, want %q", got, msg)
	}
	_ = sha256.New
	_ = fmt.Sprint
}
