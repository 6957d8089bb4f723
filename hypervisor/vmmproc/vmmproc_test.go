package vmmproc

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestExitCarriesOutput(t *testing.T) {
	p := New("qemu", "vm1", 1024)
	cmd := exec.Command("/bin/sh", "-c", "echo 'bad -machine option' >&2; exit 3")
	cmd.Stderr = p.Output()
	afterExit := false
	if err := p.Start(cmd, nil, func() { afterExit = true }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s")
	}
	if !afterExit {
		t.Error("Done closed before afterExit ran")
	}
	err := p.Err()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Fatalf("Err = %v, want the exit status 3", err)
	}
	for _, want := range []string{"qemu vm1 (pid ", "bad -machine option"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Err = %q, want it to contain %q", err, want)
		}
	}
	if err := p.StartError(errors.New("QMP did not answer")); !strings.Contains(err.Error(), "exited during start: QMP did not answer") || !errors.As(err, &exitErr) {
		t.Errorf("StartError = %v, want the cause and the exit", err)
	}
	if err := p.WaitKilled(); err != nil {
		t.Errorf("WaitKilled after exit: %v", err)
	}
}

func TestWaitKilled(t *testing.T) {
	p := New("clh", "vm2", 1024)
	if p.Started() || p.Pid() != 0 || p.Err() != nil {
		t.Fatal("a new Proc looks started")
	}
	if err := p.Start(exec.Command("sleep", "1000"), nil, nil); err != nil {
		t.Fatal(err)
	}
	if !p.Started() || p.Pid() <= 0 {
		t.Fatalf("Started %v, Pid %d after Start", p.Started(), p.Pid())
	}
	if p.Err() != nil {
		t.Fatal("Err before exit")
	}
	if err := p.WaitKilled(); err != nil {
		t.Fatal(err)
	}
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Err = %v, want the kill", err)
	}
}

func TestStartFails(t *testing.T) {
	p := New("qemu", "vm3", 1024)
	err := p.Start(exec.Command("/nonexistent/qemu-system-x86_64"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "qemu vm3: starting /nonexistent/qemu-system-x86_64") {
		t.Fatalf("Start = %v, want an error naming the VM and the binary", err)
	}
	if p.Started() {
		t.Error("Started after a failed fork")
	}
}

// Stop gives quit its grace, then kills; a process that quits is not
// killed.
func TestStop(t *testing.T) {
	p := New("qemu", "vm4", 1024)
	if err := p.Start(exec.Command("sleep", "1000"), nil, nil); err != nil {
		t.Fatal(err)
	}
	asked := false
	if err := p.Stop(context.Background(), 100*time.Millisecond, func(ctx context.Context) {
		asked = true
		if _, ok := ctx.Deadline(); !ok {
			t.Error("quit got no deadline")
		}
	}); err != nil {
		t.Fatal(err)
	}
	if !asked {
		t.Error("quit not asked")
	}
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Err = %v, want the kill after the grace", err)
	}

	q := New("qemu", "vm5", 1024)
	cmd := exec.Command("sleep", "1000")
	if err := q.Start(cmd, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.Stop(context.Background(), time.Minute, func(context.Context) { cmd.Process.Signal(syscall.SIGTERM) }); err != nil {
		t.Fatal(err)
	}
	if err := q.Err(); err == nil || !strings.Contains(err.Error(), "signal: terminated") {
		t.Errorf("Err = %v, want the exit quit caused", err)
	}
}
