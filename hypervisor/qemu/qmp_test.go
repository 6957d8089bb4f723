package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQMP serves one connection with the scripted replies; a test double
// for the protocol details only (the boot tests use real QEMU).
func fakeQMP(t *testing.T, greeting string, reply func(cmd string) []string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(greeting + "\n"))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req struct{ Execute string }
			json.Unmarshal(sc.Bytes(), &req)
			for _, r := range reply(req.Execute) {
				c.Write([]byte(r + "\n"))
			}
			if req.Execute == "quit" {
				return
			}
		}
	}()
	return sock
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`

func TestQMPCommands(t *testing.T) {
	sock := fakeQMP(t, greeting, func(cmd string) []string {
		switch cmd {
		case "qmp_capabilities", "stop":
			return []string{`{"return": {}}`}
		case "query-status":
			return []string{`{"timestamp": {}, "event": "STOP"}`, `{"return": {"status": "paused", "running": false}}`}
		case "quit":
			return nil // QEMU may exit before answering
		}
		return []string{`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Execute(ctx, "stop"); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(ctx); err != nil || st != "paused" {
		t.Errorf("status %q, %v (events must be skipped)", st, err)
	}
	if _, err := c.Execute(ctx, "bogus"); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("bogus command: %v", err)
	}
	if err := c.Quit(ctx); err != nil {
		t.Errorf("quit with the socket closed before a reply: %v", err)
	}
}

func TestQMPHostileServer(t *testing.T) {
	cases := map[string]string{
		"not qmp":  `{"hello": 1}`,
		"garbage":  "\x00\x01 not json",
		"too long": `{"QMP": "` + strings.Repeat("a", maxQMPLine+10) + `"}`,
	}
	for name, g := range cases {
		t.Run(name, func(t *testing.T) {
			sock := fakeQMP(t, g, func(string) []string { return []string{`{"return": {}}`} })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if c, err := dialQMP(ctx, sock, nil); err == nil {
				c.Close()
				t.Error("handshake succeeded")
			}
		})
	}
	t.Run("silent", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "qmp.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := dialQMP(ctx, sock, nil); err == nil {
			t.Error("handshake with a silent server succeeded")
		}
	})
	t.Run("exited", func(t *testing.T) {
		exited := make(chan struct{})
		close(exited)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := dialQMP(ctx, filepath.Join(t.TempDir(), "none.sock"), exited)
		if err == nil || !strings.Contains(err.Error(), "exited") {
			t.Errorf("error %v", err)
		}
	})
}

// FuzzQMPReply feeds arbitrary bytes where QEMU's replies go: reading must
// end in a reply or an error, never a panic or an unbounded line.
func FuzzQMPReply(f *testing.F) {
	f.Add([]byte(greeting + "\n"))
	f.Add([]byte(`{"event": "STOP"}` + "\n" + `{"return": {"status": "running"}}` + "\n"))
	f.Add([]byte(`{"error": {"class": "GenericError", "desc": "x"}}` + "\n"))
	f.Add([]byte("{\"return\": [1, 2, {\"a\": null}]}\n\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &qmpClient{r: bufio.NewReaderSize(bytes.NewReader(data), 4096)}
		for i := 0; i < 100; i++ {
			if _, err := c.readReply(); err != nil {
				return
			}
		}
	})
}
