package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/ociimage"
	"github.com/vmpod/vmpod/internal/require"
)

// Versions of the conformance tools the test builds from the Go module
// proxy (or the module cache).
const (
	critestVersion = "v1.34.0"
	registryModule = "github.com/distribution/distribution/v3/cmd/registry@v3.1.2"
	critestTimeout = 20 * time.Minute
	// critestOffline are the specs neither runtime can run here: their
	// images and digests are fixed upstream and cannot be rebuilt offline.
	critestOffline = `Image Manager`
)

// critestExceptions are the specs that runc passes and vmpod cannot, each
// with its reason (docs/kubernetes.md lists exactly these). They run for
// the kata handler too: TestCritest fails on any other spec that runc
// passes and vmpod does not, on an excepted spec that vmpod passes, and on
// an entry that names no spec of the suite, so the list cannot go stale.
// An entry with a major version applies to that containerd only.
var critestExceptions = []struct {
	specs, why string
	major      int // containerd's major version; 0: every version
	// failure, when set, must be in vmpod's failure message: the spec
	// fails on the excepted check and on no other.
	failure string
}{
	{`HostIpc is true|HostNetwork is true|portforward in host network`, "a pod in a VM has its own kernel: it cannot join the host's IPC or network namespace", 0, ""},
	// The spec checks host to container first; it must fail after.
	{`mount with 'rshared'`, "the container-to-host half of rshared: a mount made in the guest cannot reach the host through virtio-fs (the host-to-container half works)", 0, "len(fileInfo) should not be zero"},
}

// TestCritest runs cri-tools' conformance suite (critest v1.34) against
// containerd's CRI plugin (the harness's: 1.6, or 2.x with
// $VMPOD_CONTAINERD=2) twice, with the runc handler and then with the
// kata handler (every pod a VM), and checks that every spec runc passes
// passes with vmpod too, but for the listed exceptions. critest pulls its
// images, so a local registry (the distribution registry, on 127.0.0.1)
// serves busybox and a busybox web server, and containerd reaches it over
// plain HTTP through a hosts.toml. $VMPOD_CRITEST=0 skips it (it takes
// about ten minutes under TCG); $VMPOD_CRITEST_FOCUS=<regexp> runs only
// the specs it matches.
func TestCritest(t *testing.T) {
	if os.Getenv("VMPOD_CRITEST") == "0" {
		t.Skip("VMPOD_CRITEST=0")
	}
	harness.RequireVMs(t)
	critest := cachedGoTool(t, "critest-"+critestVersion, buildCritest)
	registryBin := cachedGoTool(t, "registry-v3.1.2", func(dir string) error {
		return goInstall(dir, registryModule)
	})
	addr := freeLocalAddr(t)
	hosts := t.TempDir()
	writeHostsTOML(t, hosts, addr, addr)
	// The multi-container tests pull registry.k8s.io's httpd image by
	// name: the local registry serves the web server under that name.
	writeHostsTOML(t, hosts, "registry.k8s.io", addr)
	startRegistry(t, registryBin, addr)
	e := newCRIEnvWith(t, criOptions{
		registryConfigPath: hosts,
		portmap:            true,
	})
	busybox := addr + "/busybox:latest"
	web := addr + "/webserver:latest"
	e.pushImages(busybox, web)
	images := filepath.Join(t.TempDir(), "images.yaml")
	if err := os.WriteFile(images, []byte(fmt.Sprintf("defaultTestContainerImage: %s\nwebServerTestImage: %s\n", busybox, web)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), critestTimeout)
	defer cancel()
	run := func(handler, skip string) (map[string]string, map[string]string) {
		return runCritest(ctx, t, critest, e.c.Address, handler, images, skip)
	}
	major := e.c.Daemon.Major
	runc, _ := run("runc", critestOffline)
	skip := []string{critestOffline}
	// What runc does not pass on this daemon is not counted: vmpod does
	// not run it either (specs that wait for upstream images are slow).
	// ginkgo matches the suite's description, a space and the spec's name.
	for spec, state := range runc {
		if state != "passed" && state != "skipped" {
			skip = append(skip, " "+regexp.QuoteMeta(spec)+"$")
		}
	}
	kata, failures := run("kata", strings.Join(skip, "|"))
	passed := 0
	for spec, state := range runc {
		if state != "passed" {
			if state != "skipped" {
				t.Logf("%s with runc, not run with vmpod: %s", state, spec)
			}
			continue
		}
		passed++
		why, failure := critestException(spec, major)
		switch {
		case kata[spec] == "passed" && why != "":
			t.Errorf("an excepted spec passes with vmpod now (remove it from critestExceptions and docs/kubernetes.md): %s", spec)
		case kata[spec] == "passed":
		case why != "" && !strings.Contains(failures[spec], failure):
			t.Errorf("the excepted spec fails with vmpod, but not on what the exception excuses (%q): %s: %s", failure, spec, failures[spec])
		case why != "":
			t.Logf("exception (%s): %s", why, spec)
		default:
			t.Errorf("passes with runc, %s with vmpod: %s", kata[spec], spec)
		}
	}
	if passed == 0 {
		t.Fatal("no spec passed with runc: the comparison saw nothing")
	}
	// Without a focus every spec is in runc's report, run or skipped: an
	// entry that names none of them is stale.
	if os.Getenv("VMPOD_CRITEST_FOCUS") == "" {
		for _, x := range critestExceptions {
			if x.major != 0 && x.major != major {
				continue
			}
			re := regexp.MustCompile(x.specs)
			for _, alt := range strings.Split(x.specs, "|") {
				a := regexp.MustCompile(alt)
				found := false
				for spec := range runc {
					if re.MatchString(spec) && a.MatchString(spec) {
						found = true
						break
					}
				}
				if !found {
					t.Errorf("critest exception %q names no spec of critest %s", alt, critestVersion)
				}
			}
		}
	}
}

// critestException returns why spec is an exception on containerd major
// ("" if it is none) and what its failure must say.
func critestException(spec string, major int) (why, failure string) {
	for _, x := range critestExceptions {
		if (x.major == 0 || x.major == major) && regexp.MustCompile(x.specs).MatchString(spec) {
			return x.why, x.failure
		}
	}
	return "", ""
}

// runCritest runs critest against the CRI socket with the runtime handler,
// skipping the specs skip matches, and returns each spec's final state
// (passed, failed, skipped, ...) by its full name, and the failure
// message of each that failed.
func runCritest(ctx context.Context, t *testing.T, critest, sock, handler, images, skip string) (states, failures map[string]string) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "critest-"+handler+".json")
	cmd := exec.CommandContext(ctx, critest,
		"-runtime-endpoint", "unix://"+sock, "-image-endpoint", "unix://"+sock, "-runtime-handler", handler,
		"-test-images-file", images, "-ginkgo.skip", skip, "-ginkgo.no-color", "-ginkgo.json-report", report)
	if focus := os.Getenv("VMPOD_CRITEST_FOCUS"); focus != "" {
		cmd.Args = append(cmd.Args, "-ginkgo.focus", focus)
	}
	cmd.Dir = t.TempDir()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	t.Logf("critest, handler %s: %s", handler, critestSummary(out.String()))
	states, failures, rerr := critestStates(report)
	if rerr != nil {
		t.Fatalf("critest, handler %s: %v (run: %v)\n%s", handler, rerr, err, tail(out.String(), 64<<10))
	}
	if err != nil && handler == "kata" {
		t.Logf("critest output:\n%s", tail(out.String(), 64<<10))
	}
	return states, failures
}

// critestStates reads ginkgo's JSON report: spec name to state, and to
// its failure message.
func critestStates(path string) (states, failures map[string]string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var suites []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(data, &suites); err != nil {
		return nil, nil, fmt.Errorf("ginkgo report %s: %w", path, err)
	}
	states, failures = map[string]string{}, map[string]string{}
	for _, s := range suites {
		for _, r := range s.SpecReports {
			if r.LeafNodeType != "It" {
				continue // suite setup and teardown nodes
			}
			name := strings.Join(append(r.ContainerHierarchyTexts, r.LeafNodeText), " ")
			states[name] = r.State
			failures[name] = r.Failure.Message
		}
	}
	if len(states) == 0 {
		return nil, nil, fmt.Errorf("ginkgo report %s lists no specs", path)
	}
	return states, failures, nil
}

// pushImages pushes busybox, and a web server made from it, to the local
// registry under the names busybox and web.
func (e *criEnv) pushImages(busybox, web string) {
	e.t.Helper()
	archive := harness.Busybox(e.t)
	layer, diffID, err := firstLayer(archive)
	if err != nil {
		e.t.Fatal(err)
	}
	webArchive, err := ociimage.Archive(layer, diffID, web,
		// It logs a line naming httpd, as the e2e httpd image does.
		[]string{"sh", "-c", "mkdir -p /www && echo ok > /www/index.html && echo 'httpd: serving on :80' && exec httpd -f -p 80 -h /www"})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctr := func(stdin io.Reader, args ...string) {
		if _, _, err := e.c.CtrIn(ctx, criNamespace, stdin, args...); err != nil {
			e.t.Fatal(err)
		}
	}
	ctr(bytes.NewReader(webArchive), "images", "import", "-")
	ctr(nil, "images", "tag", harness.BusyboxRef, busybox)
	httpd := path.Dir(busybox) + "/e2e-test-images/httpd:2.4.39-4"
	ctr(nil, "images", "tag", web, httpd)
	for _, ref := range []string{busybox, web, httpd} {
		ctr(nil, "images", "push", "--plain-http", ref)
	}
}

// firstLayer returns the first layer blob of an OCI archive and its diff ID.
func firstLayer(archive []byte) ([]byte, digest.Digest, error) {
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, "", err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, "", err
		}
		files[path.Clean(h.Name)] = data
	}
	blob := func(d digest.Digest) []byte { return files[path.Join("blobs", d.Algorithm().String(), d.Encoded())] }
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) == 0 {
		return nil, "", fmt.Errorf("OCI archive: bad index.json: %v", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &m); err != nil || len(m.Layers) == 0 {
		return nil, "", fmt.Errorf("OCI archive: bad manifest: %v", err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(m.Config.Digest), &cfg); err != nil || len(cfg.RootFS.DiffIDs) == 0 {
		return nil, "", fmt.Errorf("OCI archive: bad config: %v", err)
	}
	return blob(m.Layers[0].Digest), cfg.RootFS.DiffIDs[0], nil
}

// writeHostsTOML makes containerd pull the images of registry host from
// the registry at addr, over plain HTTP.
func writeHostsTOML(t *testing.T, dir, host, addr string) {
	t.Helper()
	d := filepath.Join(dir, host)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n", addr, addr)
	if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
}

// freeLocalAddr returns a 127.0.0.1 address with a port nothing listens on.
func freeLocalAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startRegistry runs the distribution registry on addr until the test ends.
func startRegistry(t *testing.T, bin, addr string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	yml := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	if err := os.WriteFile(cfg, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("registry log:\n%s", tail(logs.String(), 16<<10))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry did not listen on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var goTools sync.Map // name → *goTool

type goTool struct {
	once sync.Once
	path string
	err  error
}

// cachedGoTool returns the binary name built by build into a directory of
// the user's cache, building it once.
func cachedGoTool(t *testing.T, name string, build func(dir string) error) string {
	t.Helper()
	v, _ := goTools.LoadOrStore(name, &goTool{})
	tool := v.(*goTool)
	tool.once.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			tool.err = err
			return
		}
		dir := filepath.Join(cache, "vmpod", name)
		bin := filepath.Join(dir, strings.SplitN(name, "-", 2)[0])
		if _, err := os.Stat(bin); err == nil {
			tool.path = bin
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tool.err = err
			return
		}
		if tool.err = build(dir); tool.err == nil {
			tool.path = bin
		}
	})
	if tool.err != nil {
		require.Missingf(t, "cannot build %s: %v", name, tool.err)
	}
	return tool.path
}

// goInstall installs module (path@version) into dir.
func goInstall(dir, module string) error {
	return goCmd(os.TempDir(), []string{"GOBIN=" + dir, "CGO_ENABLED=0"}, "install", module)
}

// buildCritest builds critest, a test binary, in a scratch module in dir.
func buildCritest(dir string) error {
	mod := filepath.Join(dir, "mod")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module scratch/critest\n\ngo 1.26\n"), 0o644); err != nil {
		return err
	}
	if err := goCmd(mod, nil, "get", "-t", "sigs.k8s.io/cri-tools/cmd/critest@"+critestVersion); err != nil {
		return err
	}
	return goCmd(mod, nil, "test", "-c", "-o", filepath.Join(dir, "critest"), "sigs.k8s.io/cri-tools/cmd/critest")
}

func goCmd(dir string, env []string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 4096))
	}
	return nil
}

// critestSummary picks ginkgo's result lines out of critest's output.
func critestSummary(out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Passed") && strings.Contains(l, "Failed") || strings.HasPrefix(strings.TrimSpace(l), "[FAIL]") || strings.HasPrefix(l, "Ran ") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return strings.Join(lines, "\n")
}

func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}
