package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCRIPortForward forwards ports of a pod through `crictl
// port-forward`, which containerd serves by dialing localhost:PORT in the
// pod's network namespace on the host; vmpod carries each connection into
// the VM (docs/networking.md). Two web servers in the pod answer through
// two forwards at once, a large file arrives whole, and a port nothing
// listens on gives the client an error, as with runc.
func TestCRIPortForward(t *testing.T) {
	e := newCRIEnv(t)
	pod, podPath := e.runPod(e.podConfig("pf", false))
	web := e.startContainer(pod, podPath, containerConfig("web", 0, []string{"sh", "-c",
		"mkdir -p /a /b && echo hello-a > /a/index.html && echo hello-b > /b/index.html && " +
			"head -c 1048576 /dev/urandom > /a/big && md5sum /a/big > /a/big.md5 && " +
			"httpd -p 8080 -h /a && echo serving && exec httpd -f -p 8081 -h /b"}, nil))
	e.waitState(web, "CONTAINER_RUNNING", time.Minute)
	waitLog(t, e, web, "serving")

	a := e.portForward(t, pod, 8080)
	b := e.portForward(t, pod, 8081)

	t.Run("two forwards at once", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, c := range []struct{ addr, want string }{{a, "hello-a"}, {b, "hello-b"}, {a, "hello-a"}, {b, "hello-b"}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body, err := fetchOnce(c.addr, "/index.html")
				if err != nil {
					t.Error(err)
					return
				}
				if got := strings.TrimSpace(string(body)); got != c.want {
					t.Errorf("%s: got %q, want %q", c.addr, got, c.want)
				}
			}()
		}
		wg.Wait()
	})

	t.Run("large file", func(t *testing.T) {
		body, err := fetchOnce(a, "/big")
		if err != nil {
			t.Fatal(err)
		}
		sum, err := fetchOnce(a, "/big.md5")
		if err != nil {
			t.Fatal(err)
		}
		if len(body) != 1<<20 {
			t.Fatalf("got %d bytes, want %d", len(body), 1<<20)
		}
		if want := strings.Fields(string(sum))[0]; md5hex(body) != want {
			t.Errorf("md5 of the forwarded file %s, in the pod %s", md5hex(body), want)
		}
	})

	t.Run("refused port", func(t *testing.T) {
		addr, stderr := e.portForwardOut(t, pod, 9999)
		if body, err := fetchOnce(addr, "/"); err == nil {
			t.Fatalf("a port nothing listens on answered: %q", body)
		}
		// crictl reports containerd's failure on its error stream.
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(stderr.String(), "error forwarding port 9999") {
			if time.Now().After(deadline) {
				t.Fatalf("crictl port-forward printed no error for the refused port:\n%s", stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The forward itself stays usable, as with runc.
		if _, err := fetchOnce(a, "/index.html"); err != nil {
			t.Errorf("port 8080 after the refused one: %v", err)
		}
	})
}

// portForward runs `crictl port-forward pod LOCAL:port` until the test
// ends and returns the local address.
func (e *criEnv) portForward(t *testing.T, pod string, port int) string {
	addr, _ := e.portForwardOut(t, pod, port)
	return addr
}

// portForwardOut is portForward that also returns crictl's stderr.
func (e *criEnv) portForwardOut(t *testing.T, pod string, port int) (string, *syncBuffer) {
	t.Helper()
	addr := freeLocalAddr(t)
	_, local, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, e.crictl, "--config", e.crictlCfg, "port-forward", pod, fmt.Sprintf("%s:%d", local, port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Forwarding from") {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("crictl port-forward %s %d exited: %s", pod, port, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("crictl port-forward %s %d: not listening after a minute: %s", pod, port, stderr.String())
	}
	return addr, stderr
}

// fetchOnce fetches path from addr over a new connection.
func fetchOnce(addr, path string) ([]byte, error) {
	hc := http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s%s: %s", addr, path, resp.Status)
	}
	return body, nil
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func md5hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}
