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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/ociimage"
)

// Versions of the conformance tools the test builds from the Go module
// proxy (or the module cache).
const (
	critestVersion  = "v1.34.0"
	registryModule  = "github.com/distribution/distribution/v3/cmd/registry@v3.1.2"
	critestEnv      = "VMPOD_CRITEST"
	critestTimeout  = 40 * time.Minute
	critestSkipExpr = `Image Manager|` + // upstream images and digests, not rebuildable offline
		`SELinux|AppArmor|HostPID|HostIpc|HostNetwork|host network|` + // host namespaces and LSMs: not in a VM
		`PodPID|ContainerPID|NoNewPrivs|` + // need the nginx and nonewprivs e2e images
		`[Ss]eccomp|` + // the agent is built without libseccomp
		`Privileged is true|adding capability|` + // brctl: the guest kernel has no bridge module
		`MaskedPaths|execSync with timeout|` + // the test busybox: /bin/ls is a link to busybox; no pgrep
		`mount propagation|non-recursive readonly|` + // host-side mount propagation into the VM
		`portforward|` + // containerd 1.6 forwards in the pod's host netns, not into the VM
		`Idempotence` // containerd 1.6 answers NotFound
)

// TestCritest runs cri-tools' conformance suite (critest v1.34) against
// containerd's CRI plugin with the kata handler: every pod is a VM. It is
// long (one VM boot per test case), so it runs only when $VMPOD_CRITEST is
// set. critest pulls its images, so a local registry (the distribution
// registry, on 127.0.0.1) serves busybox and a busybox web server, and
// containerd reaches it over plain HTTP through a hosts.toml. Skipped are
// the image tests (their images and digests are fixed upstream and cannot
// be rebuilt here) and host-level features the VM cannot provide (SELinux
// and AppArmor labels on the host, host network).
func TestCritest(t *testing.T) {
	if os.Getenv(critestEnv) == "" {
		t.Skipf("set %s=1 to run critest (about one VM boot per test case)", critestEnv)
	}
	skipUnlessVMs(t)
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
		extraConfig: fmt.Sprintf("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q\n", hosts),
		portmap:     true,
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
	sock := "unix://" + e.c.Address
	cmd := exec.CommandContext(ctx, critest,
		"-runtime-endpoint", sock, "-image-endpoint", sock, "-runtime-handler", "kata",
		"-test-images-file", images, "-ginkgo.skip", critestSkipExpr, "-ginkgo.no-color")
	cmd.Dir = t.TempDir()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	summary := critestSummary(out.String())
	t.Logf("critest: %s", summary)
	if err != nil {
		t.Errorf("critest failed: %v\n%s", err, tail(out.String(), 64<<10))
	}
}

// pushImages pushes busybox, and a web server made from it, to the local
// registry under the names busybox and web.
func (e *criEnv) pushImages(busybox, web string) {
	e.t.Helper()
	archive, err := harness.BusyboxArchive()
	if err != nil {
		e.t.Skip(err)
	}
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
		t.Skipf("cannot build %s: %v", name, tool.err)
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
