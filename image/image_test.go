package image

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/kmod"
)

func TestMain(m *testing.M) { os.Exit(testbin.Run(m)) }

// fakeTree writes a modules tree with modules.dep content dep, an empty
// modules.alias and a small file per module named in dep.
func fakeTree(t *testing.T, dep string) (root, release string) {
	t.Helper()
	return fakeTreeAliases(t, dep, "")
}

// fakeTreeAliases is fakeTree with modules.alias content alias.
func fakeTreeAliases(t *testing.T, dep, alias string) (root, release string) {
	t.Helper()
	root = t.TempDir()
	release = "9.9.9-test"
	dir := filepath.Join(root, release)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.alias"), []byte(alias), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(dep, "\n") {
		mod, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		p := filepath.Join(dir, mod)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("module "+mod), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, release
}

const fakeDep = `kernel/a/virtio_pci.ko: kernel/a/virtio_pci_modern_dev.ko kernel/a/virtio.ko kernel/a/virtio_ring.ko
kernel/a/virtio_pci_modern_dev.ko: kernel/a/virtio.ko
kernel/a/virtio.ko: kernel/a/virtio_ring.ko
kernel/a/virtio_ring.ko:
kernel/b/vmw_vsock_virtio_transport.ko: kernel/b/vsock.ko kernel/a/virtio.ko
kernel/b/vsock.ko:
kernel/c/fuse-ish.ko:
kernel/c/unused.ko: kernel/b/vsock.ko
`

func TestResolveModulesOrder(t *testing.T) {
	root, rel := fakeTree(t, fakeDep)
	got, err := resolveModules(filepath.Join(root, rel), []string{"virtio_pci", "vmw_vsock_virtio_transport", "fuse_ish"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/a/virtio_ring.ko",
		"kernel/a/virtio.ko",
		"kernel/a/virtio_pci_modern_dev.ko",
		"kernel/a/virtio_pci.ko",
		"kernel/b/vsock.ko",
		"kernel/b/vmw_vsock_virtio_transport.ko",
		"kernel/c/fuse-ish.ko",
	}
	if !slices.Equal(got, want) {
		t.Errorf("order\n got %q\nwant %q", got, want)
	}
}

func TestResolveModulesErrors(t *testing.T) {
	cases := []struct {
		name, dep, want string
		mods            []string
	}{
		{"missing", fakeDep, `module "nosuch" not found`, []string{"nosuch"}},
		{"compressed", "kernel/x.ko.xz:\n", "compressed", []string{"x"}},
		{"cycle", "kernel/x.ko: kernel/y.ko\nkernel/y.ko: kernel/x.ko\n", "cycle", []string{"x"}},
		{"dangling", "kernel/x.ko: kernel/gone.ko\n", "kernel/gone.ko", []string{"x"}},
		{"syntax", "kernel/x.ko\n", "missing ':'", []string{"x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, rel := fakeTree(t, c.dep)
			_, err := resolveModules(filepath.Join(root, rel), c.mods)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := resolveModules(filepath.Join(t.TempDir(), "none"), []string{"x"}); err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("missing modules.dep: error %v", err)
	}
}

func testInit(t *testing.T) string {
	return testbin.Build(t, "./image/internal/testinit", true)
}

func TestBuildInitrdContents(t *testing.T) {
	root, rel := fakeTree(t, fakeDep)
	init := testInit(t)
	extra := filepath.Join(t.TempDir(), "extra")
	os.WriteFile(extra, []byte("extra content"), 0o600)
	out := filepath.Join(t.TempDir(), "initrd.img")
	res, err := BuildInitrd(Options{
		Init: init, Modules: []string{"vmw_vsock_virtio_transport"}, OnDemand: []string{},
		KernelRelease: rel, ModulesRoot: root,
		ExtraFiles: map[string]string{"/etc/extra/file": extra},
		Output:     out,
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != int64(len(raw)) {
		t.Errorf("Result.Size %d, file has %d bytes", res.Size, len(raw))
	}
	hdrs, data, err := readCPIO(bytes.NewReader(raw), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]uint32{}
	var names []string
	for i, h := range hdrs {
		modes["/"+h.Name] = h.Mode
		names = append(names, "/"+h.Name)
		if h.Ino != uint32(i+1) || h.Mtime != 0 {
			t.Errorf("%s: ino %d mtime %d, want %d and 0", h.Name, h.Ino, h.Mtime, i+1)
		}
	}
	if !slices.Equal(names, res.Files) {
		t.Errorf("Result.Files %q, archive has %q", res.Files, names)
	}
	if !slices.IsSorted(names) {
		t.Errorf("entries not sorted: %q", names)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/etc/vmpod", "/lib/modules/" + rel} {
		if modes[d]&modeTypes != modeDir {
			t.Errorf("%s: mode %o, want a directory", d, modes[d])
		}
	}
	if modes["/init"] != modeFile|0o755 {
		t.Errorf("/init mode %o", modes["/init"])
	}
	wantInit, _ := os.ReadFile(init)
	if !bytes.Equal(data["init"], wantInit) {
		t.Error("/init differs from the init binary")
	}
	wantList := []string{"kernel/b/vsock.ko", "kernel/a/virtio_ring.ko", "kernel/a/virtio.ko", "kernel/b/vmw_vsock_virtio_transport.ko"}
	var list []string
	for _, l := range strings.Split(string(data["etc/vmpod/modules"]), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			list = append(list, l)
		}
	}
	if !slices.Equal(list, wantList) || !slices.Equal(res.Modules, wantList) {
		t.Errorf("module list %q (result %q), want %q", list, res.Modules, wantList)
	}
	for _, m := range wantList {
		if string(data["lib/modules/"+rel+"/"+m]) != "module "+m {
			t.Errorf("module %s missing or wrong", m)
		}
	}
	if string(data["etc/extra/file"]) != "extra content" || modes["/etc/extra/file"] != modeFile|0o600 {
		t.Errorf("extra file: %q mode %o", data["etc/extra/file"], modes["/etc/extra/file"])
	}
	if _, ok := data["bin/busybox"]; ok {
		t.Error("busybox in an image built without it")
	}
}

func TestBuildInitrdReproducible(t *testing.T) {
	init := testInit(t)
	dir := t.TempDir()
	build := func(name, compression string) []byte {
		out := filepath.Join(dir, name)
		if _, err := BuildInitrd(Options{Init: init, Output: out, Compression: compression}); err != nil {
			if strings.Contains(err.Error(), "no cloud kernel") {
				require.Missing(t, err)
			}
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := build("a", CompressNone), build("b", CompressNone)
	if !bytes.Equal(a, b) {
		t.Error("two builds from the same inputs differ")
	}
	gz := build("c", CompressGzip)
	if !bytes.Equal(gz, build("d", CompressGzip)) {
		t.Error("two gzip builds differ")
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	if _, err := plain.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain.Bytes(), a) {
		t.Error("gzip image does not decompress to the plain image")
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if bytes.Equal(build("e", CompressNone), a) {
		t.Error("SOURCE_DATE_EPOCH did not change the mtimes")
	}
}

func TestBuildInitrdErrors(t *testing.T) {
	root, rel := fakeTree(t, fakeDep)
	init := testInit(t)
	out := filepath.Join(t.TempDir(), "initrd")
	base := Options{Init: init, KernelRelease: rel, ModulesRoot: root, Modules: []string{"vsock"}, OnDemand: []string{}, Output: out}
	cases := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"missing init", func(o *Options) { o.Init = "/nonexistent/init" }, "/nonexistent/init"},
		{"dynamic init", func(o *Options) { o.Init = "/bin/sh" }, "dynamically linked"},
		{"no output", func(o *Options) { o.Output = "" }, "no output"},
		{"bad compression", func(o *Options) { o.Compression = "lzma" }, "lzma"},
		{"relative extra", func(o *Options) { o.ExtraFiles = map[string]string{"etc/x": init} }, "etc/x"},
		{"missing extra", func(o *Options) { o.ExtraFiles = map[string]string{"/etc/x": "/nonexistent/x"} }, "/nonexistent/x"},
		{"unknown release", func(o *Options) { o.KernelRelease = "0.0-none" }, "0.0-none"},
		{"unknown on-demand", func(o *Options) { o.OnDemand = []string{"nosuch"} }, `module "nosuch" not found`},
		{"default on-demand absent", func(o *Options) { o.OnDemand = nil }, `module "bridge" not found`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := base
			c.mod(&o)
			_, err := BuildInitrd(o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s written despite the error", out)
			}
		})
	}
}

func TestVersionOrder(t *testing.T) {
	rels := []string{"6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64", "6.10.0-1-cloud-amd64", "5.10.0-30-cloud-amd64"}
	slices.SortFunc(rels, func(a, b string) int {
		if versionLess(a, b) {
			return -1
		}
		if versionLess(b, a) {
			return 1
		}
		return 0
	})
	want := []string{"5.10.0-30-cloud-amd64", "6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64", "6.10.0-1-cloud-amd64"}
	if !slices.Equal(rels, want) {
		t.Errorf("sorted %q, want %q", rels, want)
	}
	boot := t.TempDir()
	for _, r := range rels {
		os.WriteFile(filepath.Join(boot, "vmlinuz-"+r), nil, 0o644)
	}
	os.WriteFile(filepath.Join(boot, "vmlinuz-7.0.0-1-amd64"), nil, 0o644)
	if got, err := newestRelease(boot); err != nil || got != "6.10.0-1-cloud-amd64" {
		t.Errorf("newestRelease = %q, %v", got, err)
	}
	if _, err := newestRelease(t.TempDir()); err == nil {
		t.Error("no error for a /boot without cloud kernels")
	}
}

func TestFind(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if _, _, err := Find([]string{a, b}); err == nil || !strings.Contains(err.Error(), a) {
		t.Errorf("error %v should name the searched directories", err)
	}
	for _, n := range []string{KernelName, InitrdName} {
		os.WriteFile(filepath.Join(b, n), nil, 0o644)
	}
	os.WriteFile(filepath.Join(a, KernelName), nil, 0o644) // incomplete pair: skipped
	k, i, err := Find([]string{a, b})
	if err != nil || k != filepath.Join(b, KernelName) || i != filepath.Join(b, InitrdName) {
		t.Errorf("Find = %q %q %v", k, i, err)
	}
}

func TestBuildInitrdBusybox(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		require.Missing(t, "busybox-static not installed")
	}
	root, rel := fakeTree(t, fakeDep)
	out := filepath.Join(t.TempDir(), "initrd")
	res, err := BuildInitrd(Options{Init: testInit(t), KernelRelease: rel, ModulesRoot: root, Modules: []string{"vsock"}, OnDemand: []string{},
		Busybox: "/bin/busybox", Output: out})
	if err != nil {
		if strings.Contains(err.Error(), "dynamically linked") {
			require.Missing(t, err)
		}
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(out)
	hdrs, data, err := readCPIO(bytes.NewReader(raw), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	links := 0
	for _, h := range hdrs {
		if h.Mode&modeTypes == modeSymlink && strings.HasPrefix(h.Name, "bin/") {
			links++
			if string(data[h.Name]) != "busybox" {
				t.Errorf("%s -> %q", h.Name, data[h.Name])
			}
		}
	}
	if !slices.Contains(res.Files, "/bin/busybox") || !slices.Contains(res.Files, "/bin/sh") || links < 50 {
		t.Errorf("busybox image has %d applet links; files %d", links, len(res.Files))
	}
	if slices.Contains(res.Files, "/bin/init") {
		t.Error("busybox's init applet must not shadow the agent")
	}
}

// A kernel with everything built in (vmpod's own) gets an initrd with the
// init and no modules, module list or modprobe helper; asking for modules
// then is an error.
func TestBuildInitrdNoModules(t *testing.T) {
	init := testInit(t)
	out := filepath.Join(t.TempDir(), "initrd.img")
	// A ModulesRoot that does not exist: NoModules must not read it.
	res, err := BuildInitrd(Options{Init: init, NoModules: true, ModulesRoot: "/nonexistent", Output: out})
	if err != nil {
		t.Fatal(err)
	}
	files := strings.Join(res.Files, " ")
	if !strings.Contains(" "+files+" ", " /init ") {
		t.Errorf("no /init in %s", files)
	}
	for _, f := range res.Files {
		if strings.HasPrefix(f, "/lib/modules") || f == kmod.ListPath || f == kmod.HelperPath {
			t.Errorf("initrd without modules has %s", f)
		}
	}
	if len(res.Modules) != 0 || len(res.OnDemand) != 0 {
		t.Errorf("modules %v, on demand %v", res.Modules, res.OnDemand)
	}
	_, err = BuildInitrd(Options{Init: init, NoModules: true, Modules: []string{"vsock"}, Output: out})
	if err == nil || !strings.Contains(err.Error(), `"vsock"`) {
		t.Errorf("modules for a kernel without modules: %v", err)
	}
}
