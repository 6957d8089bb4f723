package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/vishvananda/netlink"

	"github.com/vmpod/vmpod/hostcgroup"
	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/ociimage"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
)

// The CRI tests' fixed names: the CRI plugin's namespace, the pause image
// built from integration/internal/pause, and the CNI network (a bridge
// whose name and subnet nothing else on these machines uses).
const (
	criNamespace = "k8s.io"
	pauseRef     = "registry.k8s.io/pause:vmpod-test"
	cniBridge    = "vmpodcri0"
	cniSubnet    = "10.199.0.0/24"
	cniGateway   = "10.199.0.1"
	crictlModule = "sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0"
)

// criEnv is a private containerd with the CRI plugin (handlers runc and
// kata), the pause and busybox images in namespace k8s.io, a CNI bridge
// network, and crictl pointed at it.
type criEnv struct {
	t         *testing.T
	c         *harness.Containerd
	crictl    string
	crictlCfg string
	stateRoot string
	logDir    string
}

// criOptions vary newCRIEnv.
type criOptions struct {
	// registryConfigPath is the CRI plugin's registry config_path.
	registryConfigPath string
	// portmap adds CNI's portmap plugin (hostPort) to the network.
	portmap bool
	// runtimeSnippet declares the kata handler from this containerd
	// configuration file (harness.Options.RuntimeSnippet).
	runtimeSnippet string
	// podAnnotations is the kata handler's pod_annotations.
	podAnnotations []string
	// qemuConfig holds keys added to [hypervisor.qemu] of the test's
	// vmpod configuration.
	qemuConfig string
}

func newCRIEnv(t *testing.T) *criEnv {
	t.Helper()
	return newCRIEnvWith(t, criOptions{})
}

func newCRIEnvWith(t *testing.T, opts criOptions) *criEnv {
	t.Helper()
	harness.RequireVMs(t)
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		require.Missing(t, "needs the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
	}
	crictl := crictlBinary(t)
	shimBin := testbin.Build(t, "./cmd/containerd-shim-kata-v2", false)
	dir := t.TempDir()
	cfg, stateRoot := harness.TestConfig(t, "")
	if opts.qemuConfig != "" {
		// Into the one [hypervisor.qemu] table: TOML refuses a second.
		data, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		const table = "[hypervisor.qemu]\n"
		if !bytes.Contains(data, []byte(table)) {
			t.Fatalf("vmpod test configuration %s has no %q", cfg, table)
		}
		data = bytes.Replace(data, []byte(table), []byte(table+opts.qemuConfig+"\n"), 1)
		if err := os.WriteFile(cfg, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The pods' network namespaces and host veths, and the bridge, must be
	// gone at the end (checked after the cleanups below).
	leakcheck.Check(t, leakcheck.Options{LinkPrefixes: []string{"veth", cniBridge}, NetnsPrefixes: []string{"cni-"}})
	t.Cleanup(func() { deleteLink(t, cniBridge) })
	c := harness.StartContainerd(t, harness.Options{
		ShimPath:           shimBin,
		VMPODConfig:        cfg,
		Env:                []string{"VMPOD_STATE_ROOT=" + stateRoot},
		StateDirs:          []string{stateRoot},
		CRI:                true,
		SandboxImage:       pauseRef,
		RegistryConfigPath: opts.registryConfigPath,
		RuntimeSnippet:     opts.runtimeSnippet,
		KataPodAnnotations: opts.podAnnotations,
	})
	t.Cleanup(func() { c.AssertClean(t) })
	e := &criEnv{t: t, c: c, crictl: crictl, stateRoot: stateRoot, logDir: filepath.Join(dir, "logs")}
	e.writeCNIConfig(filepath.Join(c.Dir, "cni-data"), opts.portmap)
	e.crictlCfg = filepath.Join(dir, "crictl.yaml")
	yaml := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 120\n", c.Address, c.Address)
	if err := os.WriteFile(e.crictlCfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	e.importImages()
	// Pods the test left behind go before containerd does, and the pods'
	// cgroups after them.
	t.Cleanup(func() { assertPodCgroupsEmpty(t) })
	t.Cleanup(e.removeAllPods)
	return e
}

// writeCNIConfig writes a bridge + host-local network; host-local keeps
// its leases under dataDir, inside the daemon's directory.
func (e *criEnv) writeCNIConfig(dataDir string, portmap bool) {
	e.t.Helper()
	plugins := []any{map[string]any{
		"type":      "bridge",
		"bridge":    cniBridge,
		"isGateway": true,
		"ipMasq":    false,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": dataDir,
			"ranges":  [][]map[string]string{{{"subnet": cniSubnet, "gateway": cniGateway}}},
			"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
		},
	}}
	if portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}})
	}
	conf := map[string]any{"cniVersion": "1.0.0", "name": "vmpod-test", "plugins": plugins}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.MkdirAll(e.c.CNIConfDir(), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.c.CNIConfDir(), "10-vmpod-test.conflist"), data, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// importImages imports busybox and the pause image into the CRI
// namespace.
func (e *criEnv) importImages() {
	e.t.Helper()
	busybox := harness.Busybox(e.t)
	pause := pauseImage(e.t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, archive := range [][]byte{busybox, pause} {
		if _, _, err := e.c.CtrIn(ctx, criNamespace, bytes.NewReader(archive), "images", "import", "-"); err != nil {
			e.t.Fatal(err)
		}
	}
}

// pauseImage is a one-layer image holding only /pause, the static build of
// integration/internal/pause.
func pauseImage(t *testing.T) []byte {
	t.Helper()
	bin := testbin.Build(t, "./integration/internal/pause", true)
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(946684800, 0), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	diffID := digest.NewDigestFromBytes(digest.SHA256, sha256Sum(raw.Bytes()))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	archive, err := ociimage.Archive(gz.Bytes(), diffID, pauseRef, []string{"/pause"})
	if err != nil {
		t.Fatal(err)
	}
	return archive
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

var crictlBuild struct {
	once sync.Once
	path string
	err  error
}

// crictlBinary returns crictl v1.34: $VMPOD_CRICTL, else one built from the
// Go module proxy (or module cache) into the user's cache directory, once.
func crictlBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VMPOD_CRICTL"); p != "" {
		return p
	}
	crictlBuild.once.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			crictlBuild.err = err
			return
		}
		bin := filepath.Join(cache, "vmpod", "crictl-v1.34.0")
		if _, err := os.Stat(filepath.Join(bin, "crictl")); err == nil {
			crictlBuild.path = filepath.Join(bin, "crictl")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "install", crictlModule)
		cmd.Env = append(os.Environ(), "GOBIN="+bin, "CGO_ENABLED=0")
		cmd.Dir = os.TempDir() // outside this module
		if out, err := cmd.CombinedOutput(); err != nil {
			crictlBuild.err = fmt.Errorf("go install %s: %w\n%s", crictlModule, err, out)
			return
		}
		crictlBuild.path = filepath.Join(bin, "crictl")
	})
	if crictlBuild.err != nil {
		require.Missingf(t, "no crictl: %v", crictlBuild.err)
	}
	return crictlBuild.path
}

// at returns e reporting to t (a subtest).
func (e *criEnv) at(t *testing.T) *criEnv {
	c := *e
	c.t = t
	return &c
}

// run runs crictl with a deadline; the error carries stderr.
func (e *criEnv) run(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.crictl, append([]string{"--config", e.crictlCfg}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), err
}

// must is run that fails the test on error.
func (e *criEnv) must(args ...string) string {
	e.t.Helper()
	out, err := e.run("", args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// writeJSON writes v as a JSON file in a temporary directory.
func (e *criEnv) writeJSON(name string, v any) string {
	e.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	p := filepath.Join(e.t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// podConfig is a CRI PodSandboxConfig (crictl's JSON form) with its own
// log directory; sharedPID puts its containers in one PID namespace.
func (e *criEnv) podConfig(name string, sharedPID bool) map[string]any {
	pid := 1 // CONTAINER
	if sharedPID {
		pid = 0 // POD
	}
	return map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": "uid-" + name, "attempt": 0},
		"hostname":      name + "-host",
		"log_directory": filepath.Join(e.logDir, name),
		"dns_config":    map[string]any{"servers": []string{"10.199.0.53"}, "searches": []string{"vmpod.test"}},
		"linux": map[string]any{
			"cgroup_parent": e.podCgroup(name),
			"security_context": map[string]any{
				"namespace_options": map[string]any{"pid": pid},
			},
		},
	}
}

// podCgroupRoot holds the pods' cgroup parents (podCgroup), one per pod
// as the kubelet gives each pod one.
var podCgroupRoot = fmt.Sprintf("/vmpod-test-cri-%d", os.Getpid())

// podCgroup returns the cgroup parent of pod name. The kubelet would make
// it; here the runtime does, as runc does for its own cgroup's parents.
func (e *criEnv) podCgroup(name string) string { return podCgroupRoot + "/pod-" + name }

// assertPodCgroupsEmpty runs once the environment's pods are gone: the
// pods' cgroups must hold no cgroup (the sandboxes' went with them). It
// removes them, as the kubelet would.
func assertPodCgroupsEmpty(t *testing.T) {
	g, err := hostcgroup.Open(podCgroupRoot)
	if err != nil {
		t.Error(err)
		return
	}
	for _, root := range g.Dirs() {
		pods, _ := os.ReadDir(root)
		for _, p := range pods {
			if !p.IsDir() {
				continue
			}
			pod := filepath.Join(root, p.Name())
			left, _ := os.ReadDir(pod)
			for _, l := range left {
				if l.IsDir() {
					t.Errorf("sandbox cgroup %s left behind", filepath.Join(pod, l.Name()))
					_ = os.Remove(filepath.Join(pod, l.Name()))
				}
			}
			if err := os.Remove(pod); err != nil {
				t.Errorf("pod cgroup %s: %v", pod, err)
			}
		}
		if err := os.Remove(root); err != nil && !os.IsNotExist(err) {
			t.Errorf("pod cgroups %s: %v", root, err)
		}
	}
}

// runPod starts a pod with the kata handler and returns its id and the
// path of its config.
func (e *criEnv) runPod(cfg map[string]any) (id, cfgPath string) {
	e.t.Helper()
	cfgPath = e.writeJSON("pod.json", cfg)
	return strings.TrimSpace(e.must("runp", "--runtime", "kata", cfgPath)), cfgPath
}

// containerConfig is a CRI ContainerConfig running busybox's args.
func containerConfig(name string, attempt int, args []string, linux map[string]any) map[string]any {
	c := map[string]any{
		"metadata": map[string]any{"name": name, "attempt": attempt},
		"image":    map[string]any{"image": harness.BusyboxRef},
		"command":  args,
		"log_path": fmt.Sprintf("%s-%d.log", name, attempt),
	}
	if linux != nil {
		c["linux"] = linux
	}
	return c
}

// startContainer creates and starts a container in pod and returns its id.
func (e *criEnv) startContainer(pod, podCfg string, cfg map[string]any) string {
	e.t.Helper()
	path := e.writeJSON("container.json", cfg)
	id := strings.TrimSpace(e.must("create", pod, path, podCfg))
	e.must("start", id)
	return id
}

// inspect returns crictl inspect(p) -o json, decoded.
func (e *criEnv) inspect(verb, id string) map[string]any {
	e.t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(e.must(verb, "-o", "json", id)), &v); err != nil {
		e.t.Fatalf("crictl %s %s: %v", verb, id, err)
	}
	return v
}

// field walks a decoded JSON document along keys.
func field(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// waitState polls the container's state until it is want.
func (e *criEnv) waitState(id, want string, timeout time.Duration) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := e.inspect("inspect", id)
		if field(st, "status", "state") == want {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s never reached %s: status %v", id, want, field(st, "status"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// removeAllPods stops and removes every pod (crictl stopp/rmp).
func (e *criEnv) removeAllPods() {
	out, err := e.run("", "pods", "-q")
	if err != nil {
		e.t.Logf("listing pods at cleanup: %v", err)
		return
	}
	for _, id := range strings.Fields(out) {
		if _, err := e.run("", "stopp", id); err != nil {
			e.t.Errorf("cleanup: %v", err)
		}
		if _, err := e.run("", "rmp", id); err != nil {
			e.t.Errorf("cleanup: %v", err)
		}
	}
}

// deleteLink removes a host network device if it exists.
func deleteLink(t *testing.T, name string) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Errorf("delete %s: %v", name, err)
	}
}
