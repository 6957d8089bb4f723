package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/require"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/leakcheck"
)

// nerdctlVersion is the nerdctl the test builds: v2 is not served by the
// module proxy.
const nerdctlVersion = "v1.7.7"

// nerdctlBridge is the bridge of nerdctl's default network.
const nerdctlBridge = "nerdctl0"

// nerdctlBinary returns nerdctl: $VMPOD_NERDCTL, else one built from the Go
// module proxy (in a scratch module: `go install` of it fails on the
// proxy's deprecation lookup) into the user's cache directory, once.
func nerdctlBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VMPOD_NERDCTL"); p != "" {
		return p
	}
	return cachedGoTool(t, "nerdctl-"+nerdctlVersion, func(dir string) error {
		mod := filepath.Join(dir, "mod")
		if err := os.MkdirAll(mod, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module scratch/nerdctl\n\ngo 1.26\n"), 0o644); err != nil {
			return err
		}
		if err := goCmd(mod, nil, "get", "github.com/containerd/nerdctl/cmd/nerdctl@"+nerdctlVersion); err != nil {
			return err
		}
		return goCmd(mod, []string{"CGO_ENABLED=0"}, "build", "-o", filepath.Join(dir, "nerdctl"), "github.com/containerd/nerdctl/cmd/nerdctl")
	})
}

// nerdctlEnv runs nerdctl against the harness's containerd, with its data,
// CNI configuration and namespace private to the test.
type nerdctlEnv struct {
	t       *testing.T
	e       *vmpodEnv
	bin     string
	global  []string
	runtime string // --runtime of run
}

func newNerdctlEnv(t *testing.T) *nerdctlEnv {
	t.Helper()
	for _, bin := range []string{"iptables", "/usr/lib/cni/bridge", "/usr/lib/cni/portmap"} {
		if _, err := exec.LookPath(bin); err != nil {
			require.Missingf(t, "nerdctl's bridge network needs %s (apt-get install iptables containernetworking-plugins): %v", bin, err)
		}
	}
	bin := nerdctlBinary(t)
	// The bridge, the containers' veths and the CNI chains go when the
	// test ends; the veths with their namespaces.
	leakcheck.Check(t, leakcheck.Options{LinkPrefixes: []string{nerdctlBridge, "veth"}})
	t.Cleanup(func() {
		deleteLink(t, nerdctlBridge)
		cleanCNIChains(t)
	})
	// host-local keeps the leases of nerdctl's network here; removed after
	// the daemon's teardown, whose container deletions release leases.
	leases := "/var/lib/cni/networks/bridge"
	if _, err := os.Stat(leases); os.IsNotExist(err) {
		t.Cleanup(func() { os.RemoveAll(leases) })
	}
	e := newVMPodEnv(t, "")
	dir := t.TempDir()
	n := &nerdctlEnv{t: t, e: e, bin: bin, global: []string{
		"--address", e.c.Address,
		"--namespace", harness.Namespace,
		"--data-root", filepath.Join(dir, "data"),
		"--cni-path", "/usr/lib/cni",
		"--cni-netconfpath", filepath.Join(dir, "cni"),
	}}
	return n
}

// cleanCNIChains removes the iptables chains CNI's bridge, firewall and
// portmap plugins leave once their last container is gone, and the rules
// that jump to them.
func cleanCNIChains(t *testing.T) {
	for _, table := range []string{"filter", "nat"} {
		out, err := exec.Command("iptables", "-t", table, "-S").Output()
		if err != nil {
			t.Errorf("iptables -t %s -S: %v", table, err)
			continue
		}
		var chains []string
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && f[0] == "-N" && strings.HasPrefix(f[1], "CNI-"):
				chains = append(chains, f[1])
			case len(f) >= 4 && f[0] == "-A" && !strings.HasPrefix(f[1], "CNI-") && strings.Contains(line, " -j CNI-"):
				// A rule of a built-in chain that jumps to a CNI chain:
				// delete it by its spec, through the shell, which undoes
				// the quoting of comments in iptables -S.
				cmd := "iptables -t " + table + " -D " + strings.TrimPrefix(line, "-A ")
				if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
					t.Errorf("%s: %v: %s", cmd, err, out)
				}
			}
		}
		for _, c := range chains {
			exec.Command("iptables", "-t", table, "-F", c).Run()
		}
		for _, c := range chains {
			if out, err := exec.Command("iptables", "-t", table, "-X", c).CombinedOutput(); err != nil {
				t.Errorf("iptables -t %s -X %s: %v: %s", table, c, err, out)
			}
		}
	}
}

// result is what one nerdctl command did.
type result struct {
	out, err string
	code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.out, tail(r.err, 400))
}

// nerdctl runs nerdctl with stdin (nil: none) under a deadline.
func (n *nerdctlEnv) nerdctl(stdin io.Reader, args ...string) result {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, append(append([]string{}, n.global...), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	r := result{out: out.String(), err: errb.String()}
	if err != nil {
		r.code = exitCode(err)
	}
	if r.code < 0 {
		n.t.Fatalf("nerdctl %v: %v", args, err)
	}
	return r
}

// inTerminal runs nerdctl on a terminal, which -t needs (nerdctl sets its
// own terminal raw): util-linux's script makes one.
func (n *nerdctlEnv) inTerminal(args ...string) result {
	n.t.Helper()
	if _, err := exec.LookPath("script"); err != nil {
		require.Missingf(n.t, "needs script (util-linux) for a terminal: %v", err)
	}
	quoted := make([]string, 0, len(n.global)+len(args)+1)
	for _, a := range append(append([]string{n.bin}, n.global...), args...) {
		quoted = append(quoted, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qefc", strings.Join(quoted, " "), "/dev/null")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{out: out.String(), err: errb.String()}
	if err != nil {
		r.code = exitCode(err)
	}
	if r.code < 0 {
		n.t.Fatalf("script nerdctl %v: %v", args, err)
	}
	return r
}

// run is `nerdctl run` with the runtime under test.
func (n *nerdctlEnv) run(stdin io.Reader, flagsAndArgs ...string) result {
	n.t.Helper()
	return n.nerdctl(stdin, append([]string{"run", "--runtime", n.runtime}, flagsAndArgs...)...)
}

// must fails the test unless r exited 0.
func (n *nerdctlEnv) must(r result) string {
	n.t.Helper()
	if r.code != 0 {
		n.t.Fatalf("nerdctl failed: %s", r)
	}
	return r.out
}

// nerdctlScenario is one user action: do fails when it did not do what it
// should, and returns what must be the same under runc and vmpod.
type nerdctlScenario struct {
	name string
	do   func(n *nerdctlEnv, name string) (out string, err error)
}

// TestNerdctl runs the same nerdctl scenarios with runc and with vmpod on
// one containerd; each must pass with both and give the same result.
func TestNerdctl(t *testing.T) {
	n := newNerdctlEnv(t)
	img := harness.BusyboxRef
	shared := t.TempDir()
	if err := os.WriteFile(filepath.Join(shared, "in"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freeLocalAddr(t) // 127.0.0.1:<port>, free now
	_, hostPort, _ := net.SplitHostPort(port)

	expect := func(r result, code int, out string) (string, error) {
		if r.code != code || r.out != out {
			return r.out, fmt.Errorf("got %s, want exit %d and stdout %q", r, code, out)
		}
		return r.out, nil
	}
	scenarios := []nerdctlScenario{
		{"run --rm", func(n *nerdctlEnv, name string) (string, error) {
			return expect(n.run(nil, "--rm", "--net", "none", img, "echo", "hi"), 0, "hi\n")
		}},
		{"exit code", func(n *nerdctlEnv, name string) (string, error) {
			return expect(n.run(nil, "--rm", "--net", "none", img, "sh", "-c", "exit 3"), 3, "")
		}},
		{"-e -w -u", func(n *nerdctlEnv, name string) (string, error) {
			return expect(n.run(nil, "--rm", "--net", "none", "-e", "FOO=bar", "-w", "/tmp", "-u", "1000:1000", img,
				"sh", "-c", `echo "$FOO"; pwd; id -u; id -g`), 0, "bar\n/tmp\n1000\n1000\n")
		}},
		{"-v rw and ro", func(n *nerdctlEnv, name string) (string, error) {
			out, err := expect(n.run(nil, "--rm", "--net", "none", "-v", shared+":/rw", "-v", shared+":/ro:ro", img,
				"sh", "-c", "cat /rw/in; echo "+name+" > /rw/"+name+"; if touch /ro/probe 2>/dev/null; then echo writable; else echo read-only; fi"),
				0, "from host\nread-only\n")
			if err != nil {
				return out, err
			}
			if data, rerr := os.ReadFile(filepath.Join(shared, name)); rerr != nil || string(data) != name+"\n" {
				return out, fmt.Errorf("the host reads %q (%v) from the container's write", data, rerr)
			}
			return out, nil
		}},
		{"-i stdin", func(n *nerdctlEnv, name string) (string, error) {
			return expect(n.run(strings.NewReader("piped through cat\n"), "--rm", "-i", "--net", "none", img, "cat"), 0, "piped through cat\n")
		}},
		{"-t", func(n *nerdctlEnv, name string) (string, error) {
			r := n.inTerminal("run", "--runtime", n.runtime, "--rm", "-t", "--net", "none", img, "sh", "-c", "if [ -t 1 ]; then echo tty; else echo no tty; fi")
			// Both terminals, the container's and script's, add a \r.
			r.out = strings.ReplaceAll(r.out, "\r", "")
			return expect(r, 0, "tty\n")
		}},
		{"--net none", func(n *nerdctlEnv, name string) (string, error) {
			return expect(n.run(nil, "--rm", "--net", "none", img, "sh", "-c", "ls /sys/class/net"), 0, "lo\n")
		}},
		{"bridge network -p", func(n *nerdctlEnv, name string) (string, error) {
			r := n.run(nil, "-d", "--name", name, "-p", "127.0.0.1:"+hostPort+":80", img,
				"sh", "-c", "mkdir -p /www && echo hello > /www/index.html && ip -4 -o addr show eth0 | grep -c 'inet 10.4.0.' > /www/ip && exec httpd -f -p 80 -h /www")
			defer n.nerdctl(nil, "rm", "-f", name)
			if r.code != 0 {
				return "", fmt.Errorf("run -d: %s", r)
			}
			body, err := httpGet("http://127.0.0.1:"+hostPort+"/index.html", time.Minute)
			if err != nil {
				return "", fmt.Errorf("published port: %w", err)
			}
			ip, err := httpGet("http://127.0.0.1:"+hostPort+"/ip", 10*time.Second)
			if err != nil || ip != "1\n" {
				return body, fmt.Errorf("the container has no address of nerdctl's bridge network on eth0: %q, %v", ip, err)
			}
			return body, nil
		}},
		{"run -d exec logs inspect kill rm", func(n *nerdctlEnv, name string) (string, error) {
			r := n.run(nil, "-d", "--name", name, "--net", "none", img, "sh", "-c", "echo started; exec sleep 600")
			defer n.nerdctl(nil, "rm", "-f", name)
			if r.code != 0 {
				return "", fmt.Errorf("run -d: %s", r)
			}
			id := strings.TrimSpace(r.out) // what kill prints
			var outs []string
			// nerdctl exec exits 1 when the process exits non-zero.
			if r := n.nerdctl(nil, "exec", name, "sh", "-c", "exit 5"); r.code != 1 || !strings.Contains(r.err, "exec failed with exit code 5") {
				return "", fmt.Errorf("exec of exit 5: %s", r)
			}
			for _, step := range []struct {
				args []string
				code int
				out  string
			}{
				{[]string{"exec", "-e", "X=1", "-w", "/tmp", name, "sh", "-c", `echo "$X"; pwd`}, 0, "1\n/tmp\n"},
				{[]string{"logs", name}, 0, "started\n"},
				{[]string{"inspect", "--format", "{{.State.Status}} {{.State.Running}}", name}, 0, "running true\n"},
				{[]string{"kill", name}, 0, id + "\n"},
			} {
				out, err := expect(n.nerdctl(nil, step.args...), step.code, step.out)
				if err != nil {
					return "", fmt.Errorf("%v: %w", step.args, err)
				}
				if step.args[0] != "kill" {
					outs = append(outs, out)
				}
			}
			if err := n.waitStatus(name, "exited"); err != nil {
				return "", err
			}
			if _, err := expect(n.nerdctl(nil, "rm", name), 0, name+"\n"); err != nil {
				return "", fmt.Errorf("rm: %w", err)
			}
			if r := n.nerdctl(nil, "inspect", name); r.code == 0 {
				return "", fmt.Errorf("inspect after rm: %s", r)
			}
			return strings.Join(outs, ""), nil
		}},
		{"stop", func(n *nerdctlEnv, name string) (string, error) {
			r := n.run(nil, "-d", "--name", name, "--net", "none", img, "sleep", "600")
			defer n.nerdctl(nil, "rm", "-f", name)
			if r.code != 0 {
				return "", fmt.Errorf("run -d: %s", r)
			}
			if _, err := expect(n.nerdctl(nil, "stop", "-t", "2", name), 0, name+"\n"); err != nil {
				return "", fmt.Errorf("stop: %w", err)
			}
			if err := n.waitStatus(name, "exited"); err != nil {
				return "", err
			}
			return expect(n.nerdctl(nil, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name), 0, "exited 137\n")
		}},
	}

	for _, runtime := range []struct{ name, runtime string }{{"runc", "io.containerd.runc.v2"}, {"vmpod", "io.containerd.kata.v2"}} {
		t.Run(runtime.name, func(t *testing.T) {
			rn := *n
			rn.t, rn.runtime = t, runtime.runtime
			results := map[string]string{}
			for i, sc := range scenarios {
				t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
					sn := rn
					sn.t = t
					out, err := sc.do(&sn, fmt.Sprintf("%s-%d", runtime.name, i))
					if err != nil {
						t.Error(err)
					}
					results[sc.name] = out
				})
			}
			if runtime.name == "runc" {
				nerdctlRuncResults = results
				return
			}
			for _, sc := range scenarios {
				if got, want := results[sc.name], nerdctlRuncResults[sc.name]; got != want {
					t.Errorf("%s: vmpod gave %q, runc %q", sc.name, got, want)
				}
			}
		})
	}
	// Every container is gone: nerdctl's postStop hook undid its network.
	if r := n.nerdctl(nil, "ps", "-a", "-q"); strings.TrimSpace(r.out) != "" {
		t.Errorf("containers remain: %s", r.out)
	}
	n.e.c.AssertClean(t)
}

// nerdctlRuncResults holds the runc run's outputs for the vmpod run.
var nerdctlRuncResults map[string]string

// waitStatus polls nerdctl inspect until container name has status.
func (n *nerdctlEnv) waitStatus(name, status string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		r := n.nerdctl(nil, "inspect", "--format", "{{.State.Status}}", name)
		if strings.TrimSpace(r.out) == status {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container %s never became %s: %s", name, status, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// httpGet fetches url, retrying until timeout while the server comes up.
func httpGet(url string, timeout time.Duration) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(body), nil
			}
			err = fmt.Errorf("status %s, %v", resp.Status, rerr)
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(300 * time.Millisecond)
	}
}
