package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// isolate points every lookup of Load at paths under a fresh directory.
func isolate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	old := SystemPath
	SystemPath = filepath.Join(dir, "etc", "configuration.toml")
	t.Cleanup(func() { SystemPath = old })
	t.Setenv(EnvConfig, "")
	return dir
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func defaults() Config {
	return Config{
		Hypervisor: Hypervisor{QEMU: QEMU{
			Path:          "qemu-system-x86_64",
			MachineType:   "q35",
			Accel:         "auto",
			KernelParams:  []string{},
			DefaultVCPUs:  1,
			DefaultMemory: 512,
			SharedFS:      "virtio-fs",
			VirtiofsdPath: "/usr/lib/qemu/virtiofsd",
			VsockMode:     "auto",
			Jail:          true,
			JailUIDStart:  1879048192,
			JailUIDCount:  65536,

			EnableAnnotations: []string{},
			MaxMemory:         4096,
			FreePageReporting: true,
			TCGTBSize:         64,
		},
			CLH: CLH{
				Path:          "cloud-hypervisor",
				KernelParams:  []string{},
				DefaultVCPUs:  1,
				DefaultMemory: 512,
				VirtiofsdPath: "/usr/lib/qemu/virtiofsd",
				JailUIDStart:  1879048192,
				JailUIDCount:  65536,
			},
			Type: TypeQEMU,
		},
		Agent:   Agent{DialTimeout: Duration{30 * time.Second}, HealthCheckInterval: Duration{5 * time.Second}, HealthCheckTimeout: Duration{10 * time.Second}},
		Runtime: Runtime{NetworkModel: "tcfilter", ResourceManagement: ResourceBoth, EnableMetrics: true},
		Source:  DefaultSource,
	}
}

func TestDefaultsLoad(t *testing.T) {
	isolate(t)
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if want := defaults(); !reflect.DeepEqual(*cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *cfg, want)
	}
}

const twoKeys = `
[hypervisor.qemu]
default_memory = 1024
[runtime]
network_model = "none"
`

func assertTwoKeys(t *testing.T, cfg *Config, source string) {
	t.Helper()
	want := defaults()
	want.Hypervisor.QEMU.DefaultMemory = 1024
	want.Runtime.NetworkModel = "none"
	want.Source = source
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("override:\n got %+v\nwant %+v", *cfg, want)
	}
}

func TestOverrideExplicitPath(t *testing.T) {
	dir := isolate(t)
	p := writeFile(t, filepath.Join(dir, "explicit.toml"), twoKeys)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	assertTwoKeys(t, cfg, p)
}

func TestOverrideEnv(t *testing.T) {
	dir := isolate(t)
	p := writeFile(t, filepath.Join(dir, "env.toml"), twoKeys)
	t.Setenv(EnvConfig, p)
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	assertTwoKeys(t, cfg, p)
}

func TestOverrideSystem(t *testing.T) {
	isolate(t)
	writeFile(t, SystemPath, twoKeys)
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	assertTwoKeys(t, cfg, SystemPath)
}

func TestPrecedence(t *testing.T) {
	dir := isolate(t)
	mem := func(n string) string { return "[hypervisor.qemu]\ndefault_memory = " + n + "\n" }
	explicit := writeFile(t, filepath.Join(dir, "explicit.toml"), mem("1001"))
	env := writeFile(t, filepath.Join(dir, "env.toml"), mem("1002"))
	writeFile(t, SystemPath, mem("1003"))
	t.Setenv(EnvConfig, env)

	for _, tc := range []struct {
		name       string
		configPath string
		env        string
		want       uint32
		source     string
	}{
		{"config path beats env and system", explicit, env, 1001, explicit},
		{"env beats system", "", env, 1002, env},
		{"system beats default", "", "", 1003, SystemPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvConfig, tc.env)
			cfg, err := Load(tc.configPath)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Hypervisor.QEMU.DefaultMemory != tc.want || cfg.Source != tc.source {
				t.Errorf("got memory %d from %s, want %d from %s", cfg.Hypervisor.QEMU.DefaultMemory, cfg.Source, tc.want, tc.source)
			}
		})
	}
}

func TestJailKeys(t *testing.T) {
	isolate(t)
	p := writeFile(t, filepath.Join(t.TempDir(), "jail.toml"),
		"[hypervisor.qemu]\njail = false\njail_uid_start = 4294901760\njail_uid_count = 65535\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.Hypervisor.QEMU
	if q.Jail || q.JailUIDStart != 4294901760 || q.JailUIDCount != 65535 {
		t.Errorf("jail %v, start %d, count %d; want false, 4294901760, 65535 (the last range allowed)", q.Jail, q.JailUIDStart, q.JailUIDCount)
	}
}

// A file that raises default_memory past the default max_memory keeps
// loading: the VM then has no room for memory hot-plug.
func TestDefaultMemoryAboveDefaultMax(t *testing.T) {
	dir := isolate(t)
	p := writeFile(t, filepath.Join(dir, "c.toml"), "[hypervisor.qemu]\ndefault_memory = 8192\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if q := cfg.Hypervisor.QEMU; q.MaxMemory != 8192 {
		t.Errorf("max_memory %d, want default_memory's 8192", q.MaxMemory)
	}
}

func TestEffectiveMaxVCPUs(t *testing.T) {
	for _, tc := range []struct {
		max, def uint32
		host     int
		want     uint32
	}{
		{0, 1, 2, 2},      // the host's CPUs
		{0, 1, 0, 1},      // an unknown host counts as one
		{0, 1, 1000, 256}, // capped at MaxVCPUs
		{0, 4, 2, 4},      // never below default_vcpus
		{8, 1, 2, 8},      // an explicit maximum is kept
	} {
		if got := (QEMU{MaxVCPUs: tc.max, DefaultVCPUs: tc.def}).EffectiveMaxVCPUs(tc.host); got != tc.want {
			t.Errorf("max_vcpus %d default %d host %d: %d, want %d", tc.max, tc.def, tc.host, got, tc.want)
		}
	}
}

func TestKernelParamsReplaced(t *testing.T) {
	dir := isolate(t)
	p := writeFile(t, filepath.Join(dir, "c.toml"), "[hypervisor.qemu]\nkernel_params = [\"quiet\", \"tsc_early_khz=2000000\"]\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"quiet", "tsc_early_khz=2000000"}; !reflect.DeepEqual(cfg.Hypervisor.QEMU.KernelParams, want) {
		t.Errorf("kernel_params = %q, want %q", cfg.Hypervisor.QEMU.KernelParams, want)
	}
}

func TestSizingKeys(t *testing.T) {
	isolate(t)
	p := writeFile(t, filepath.Join(t.TempDir(), "sizing.toml"),
		"[hypervisor.qemu]\nenable_annotations = [\"^default_(vcpus|memory)$\", \"kernel_params\"]\n[runtime]\nresource_management = \"static\"\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"^default_(vcpus|memory)$", "kernel_params"}; !reflect.DeepEqual(cfg.Hypervisor.QEMU.EnableAnnotations, want) {
		t.Errorf("enable_annotations = %q, want %q", cfg.Hypervisor.QEMU.EnableAnnotations, want)
	}
	if cfg.Runtime.ResourceManagement != ResourceStatic {
		t.Errorf("resource_management = %q, want %q", cfg.Runtime.ResourceManagement, ResourceStatic)
	}
	for mode, want := range map[string]bool{ResourceStatic: true, ResourceBoth: true, ResourceHotplug: false} {
		if got := SizesAtCreation(mode); got != want {
			t.Errorf("SizesAtCreation(%q) = %v, want %v", mode, got, want)
		}
	}
}

func TestBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		want    []string // substrings of the error, besides the file's path
	}{
		{"unknown key", "[hypervisor.qemu]\nfoo = 1\n", []string{"unknown key hypervisor.qemu.foo in "}},
		{"unknown section", "[hypervisor.firecracker]\npath = \"x\"\n", []string{"unknown key hypervisor.firecracker"}},
		{"wrong type string for int", "[hypervisor.qemu]\ndefault_vcpus = \"2\"\n", []string{"hypervisor.qemu.default_vcpus", "incompatible types"}},
		{"wrong type int for string", "[hypervisor.qemu]\nmachine_type = 5\n", []string{"hypervisor.qemu.machine_type"}},
		{"wrong type table", "hypervisor = 5\n", []string{"hypervisor"}},
		{"wrong type bool", "[agent]\ndebug = \"yes\"\n", []string{"agent.debug"}},
		{"negative memory", "[hypervisor.qemu]\ndefault_memory = -512\n", []string{"hypervisor.qemu.default_memory in ", "-512 is negative"}},
		{"negative vcpus", "[hypervisor.qemu]\ndefault_vcpus = -1\n", []string{"hypervisor.qemu.default_vcpus in ", "negative"}},
		{"zero vcpus", "[hypervisor.qemu]\ndefault_vcpus = 0\n", []string{"hypervisor.qemu.default_vcpus", "outside 1..256"}},
		{"too many vcpus", "[hypervisor.qemu]\ndefault_vcpus = 257\n", []string{"hypervisor.qemu.default_vcpus", "outside"}},
		{"little memory", "[hypervisor.qemu]\ndefault_memory = 32\n", []string{"hypervisor.qemu.default_memory", "outside 64.."}},
		{"huge memory", "[hypervisor.qemu]\ndefault_memory = 99999999999\n", []string{"hypervisor.qemu.default_memory", "outside"}},
		{"bad machine", "[hypervisor.qemu]\nmachine_type = \"pc\"\n", []string{"hypervisor.qemu.machine_type in ", `"pc" is not one of q35, microvm`}},
		{"bad accel", "[hypervisor.qemu]\naccel = \"hvf\"\n", []string{"hypervisor.qemu.accel", "auto, kvm, tcg"}},
		{"bad vsock", "[hypervisor.qemu]\nvsock_mode = \"hybrid\"\n", []string{"hypervisor.qemu.vsock_mode"}},
		{"bad shared fs", "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\n", []string{"hypervisor.qemu.shared_fs"}},
		{"bad network", "[runtime]\nnetwork_model = \"macvtap\"\n", []string{"runtime.network_model"}},
		{"empty qemu path", "[hypervisor.qemu]\npath = \"\"\n", []string{"hypervisor.qemu.path", "empty"}},
		{"relative qemu path", "[hypervisor.qemu]\npath = \"bin/qemu\"\n", []string{"hypervisor.qemu.path"}},
		{"relative kernel", "[hypervisor.qemu]\nkernel = \"out/vmpod-kernel\"\n", []string{"hypervisor.qemu.kernel", "not an absolute path"}},
		{"empty kernel param", "[hypervisor.qemu]\nkernel_params = [\"\"]\n", []string{"hypervisor.qemu.kernel_params"}},
		{"zero dial timeout", "[agent]\ndial_timeout = \"0s\"\n", []string{"agent.dial_timeout"}},
		{"negative dial timeout", "[agent]\ndial_timeout = \"-5s\"\n", []string{"agent.dial_timeout"}},
		{"long dial timeout", "[agent]\ndial_timeout = \"11m\"\n", []string{"agent.dial_timeout", "at most 10m"}},
		{"bad dial timeout", "[agent]\ndial_timeout = \"soon\"\n", []string{"agent.dial_timeout", "invalid duration"}},
		{"dial timeout number", "[agent]\ndial_timeout = 30\n", []string{"agent.dial_timeout"}},
		{"zero health check interval", "[agent]\nhealth_check_interval = \"0s\"\n", []string{"agent.health_check_interval"}},
		{"negative health check timeout", "[agent]\nhealth_check_timeout = \"-1s\"\n", []string{"agent.health_check_timeout"}},
		{"zero jail uid start", "[hypervisor.qemu]\njail_uid_start = 0\n", []string{"hypervisor.qemu.jail_uid_start in ", "outside 1..4294967294"}},
		{"negative jail uid count", "[hypervisor.qemu]\njail_uid_count = -1\n", []string{"hypervisor.qemu.jail_uid_count in ", "negative"}},
		{"zero jail uid count", "[hypervisor.qemu]\njail_uid_count = 0\n", []string{"hypervisor.qemu.jail_uid_count", "outside 1.."}},
		{"jail range past the last uid", "[hypervisor.qemu]\njail_uid_start = 4294967000\njail_uid_count = 296\n", []string{"hypervisor.qemu.jail_uid_count in ", "4294967000 + jail_uid_count 296 = 4294967296", "not a uid"}},
		{"jail not a bool", "[hypervisor.qemu]\njail = 1\n", []string{"hypervisor.qemu.jail"}},
		{"bad resource management", "[runtime]\nresource_management = \"dynamic\"\n", []string{"runtime.resource_management in ", `"dynamic" is not one of static, hotplug, both`}},
		{"bad annotation pattern", "[hypervisor.qemu]\nenable_annotations = [\"default_(vcpus\"]\n", []string{"hypervisor.qemu.enable_annotations in ", `entry 0 ("default_(vcpus") is not a regular expression`}},
		{"empty annotation pattern", "[hypervisor.qemu]\nenable_annotations = [\"kernel_params\", \" \"]\n", []string{"hypervisor.qemu.enable_annotations in ", "entry 1 is empty"}},
		{"annotation pattern not a list", "[hypervisor.qemu]\nenable_annotations = \"default_vcpus\"\n", []string{"hypervisor.qemu.enable_annotations"}},
		{"bad hypervisor type", "[hypervisor]\ntype = \"firecracker\"\n", []string{"hypervisor.type in ", `"firecracker" is not one of qemu, clh`}},
		{"hypervisor type not a string", "[hypervisor]\ntype = 1\n", []string{"hypervisor.type"}},
		{"unknown clh key", "[hypervisor.clh]\nmachine_type = \"q35\"\n", []string{"unknown key hypervisor.clh.machine_type in "}},
		{"empty clh path", "[hypervisor.clh]\npath = \"\"\n", []string{"hypervisor.clh.path", "empty"}},
		{"relative clh path", "[hypervisor.clh]\npath = \"bin/cloud-hypervisor\"\n", []string{"hypervisor.clh.path"}},
		{"relative clh kernel", "[hypervisor.clh]\nkernel = \"vmlinux\"\n", []string{"hypervisor.clh.kernel", "not an absolute path"}},
		{"relative clh initrd", "[hypervisor.clh]\ninitrd = \"initrd\"\n", []string{"hypervisor.clh.initrd", "not an absolute path"}},
		{"empty clh kernel param", "[hypervisor.clh]\nkernel_params = [\" \"]\n", []string{"hypervisor.clh.kernel_params"}},
		{"zero clh vcpus", "[hypervisor.clh]\ndefault_vcpus = 0\n", []string{"hypervisor.clh.default_vcpus", "outside 1..256"}},
		{"little clh memory", "[hypervisor.clh]\ndefault_memory = 32\n", []string{"hypervisor.clh.default_memory", "outside 64.."}},
		{"empty clh virtiofsd", "[hypervisor.clh]\nvirtiofsd_path = \"\"\n", []string{"hypervisor.clh.virtiofsd_path", "empty"}},
		{"clh jail not a bool", "[hypervisor.clh]\njail = \"yes\"\n", []string{"hypervisor.clh.jail"}},
		{"clh jail range past the last uid", "[hypervisor.clh]\njail_uid_start = 4294967295\n", []string{"hypervisor.clh.jail_uid_start in ", "outside"}},
		{"negative max vcpus", "[hypervisor.qemu]\nmax_vcpus = -1\n", []string{"hypervisor.qemu.max_vcpus in ", "negative"}},
		{"too many max vcpus", "[hypervisor.qemu]\nmax_vcpus = 257\n", []string{"hypervisor.qemu.max_vcpus in ", "outside 0..256"}},
		{"max vcpus below default", "[hypervisor.qemu]\ndefault_vcpus = 4\nmax_vcpus = 2\n", []string{"hypervisor.qemu.max_vcpus in ", "2 is below default_vcpus 4"}},
		{"max memory below default", "[hypervisor.qemu]\ndefault_memory = 2048\nmax_memory = 1024\n", []string{"hypervisor.qemu.max_memory in ", "1024 MiB is below default_memory 2048 MiB"}},
		{"huge max memory", "[hypervisor.qemu]\nmax_memory = 300000\n", []string{"hypervisor.qemu.max_memory in ", "outside 64..262144"}},
		{"negative tb size", "[hypervisor.qemu]\ntcg_tb_size = -1\n", []string{"hypervisor.qemu.tcg_tb_size in ", "-1 is negative"}},
		{"huge tb size", "[hypervisor.qemu]\ntcg_tb_size = 4096\n", []string{"hypervisor.qemu.tcg_tb_size in ", "outside 0..2048"}},
		{"free page reporting not a bool", "[hypervisor.qemu]\nfree_page_reporting = 1\n", []string{"free_page_reporting"}},
		{"syntax", "[hypervisor.qemu\n", []string{"bad.toml:2: ", "table name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			p := writeFile(t, filepath.Join(dir, "bad.toml"), tc.content)
			cfg, err := Load(p)
			if err == nil {
				t.Fatalf("Load accepted %q: %+v", tc.content, cfg)
			}
			for _, w := range append(tc.want, p) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	dir := isolate(t)
	missing := filepath.Join(dir, "nope.toml")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("explicit missing file: err = %v, want one naming %s", err, missing)
	}
	t.Setenv(EnvConfig, missing)
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("$%s missing file: err = %v, want one naming %s", EnvConfig, err, missing)
	}
}

func TestDirectoryAsFile(t *testing.T) {
	dir := isolate(t)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("directory as config: err = %v, want one naming %s", err, dir)
	}
}

func TestOversizedFile(t *testing.T) {
	dir := isolate(t)
	p := writeFile(t, filepath.Join(dir, "big.toml"), "# "+strings.Repeat("x", maxConfigFileLen)+"\n")
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: err = %v", err)
	}
}

// TestCLHSelected: type = "clh" makes [hypervisor.clh]'s shared keys the
// ones the shim reads, and file lookups name clh's keys.
func TestCLHSelected(t *testing.T) {
	dir := isolate(t)
	p := writeFile(t, filepath.Join(dir, "clh.toml"), "[hypervisor]\ntype = \"clh\"\n[hypervisor.clh]\npath = \"/opt/ch/cloud-hypervisor\"\ndefault_vcpus = 3\ndefault_memory = 768\nkernel_params = [\"a=1\"]\njail = true\nkernel = \"/nonexistent/vmlinux\"\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	sel := cfg.Hypervisor.Selected()
	if sel.Path != "/opt/ch/cloud-hypervisor" || sel.DefaultVCPUs != 3 || sel.DefaultMemory != 768 || !sel.Jail || !reflect.DeepEqual(sel.KernelParams, []string{"a=1"}) {
		t.Errorf("Selected() = %+v: not [hypervisor.clh]'s values", sel)
	}
	if q := cfg.Hypervisor.QEMU; q.DefaultVCPUs != 1 || q.Path != "qemu-system-x86_64" {
		t.Errorf("[hypervisor.qemu] changed: %+v", q)
	}
	if _, err := cfg.KernelPath(); err == nil || !strings.Contains(err.Error(), "hypervisor.clh.kernel in "+p) {
		t.Errorf("KernelPath: %v; want an error naming hypervisor.clh.kernel and %s", err, p)
	}
	if _, err := cfg.Resolve(); err == nil || !strings.Contains(err.Error(), "hypervisor.clh.path") {
		t.Errorf("Resolve: %v; want an error naming hypervisor.clh.path", err)
	}
	def, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if def.Hypervisor.Type != TypeQEMU || !reflect.DeepEqual(def.Hypervisor.Selected(), def.Hypervisor.QEMU) {
		t.Errorf("the default type is %q, Selected %+v", def.Hypervisor.Type, def.Hypervisor.Selected())
	}
}

// TestMemoryKeys: free_page_reporting and tcg_tb_size reach the QEMU
// section as written.
func TestMemoryKeys(t *testing.T) {
	isolate(t)
	p := writeFile(t, filepath.Join(t.TempDir(), "memory.toml"), "[hypervisor.qemu]\nfree_page_reporting = false\ntcg_tb_size = 0\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if q := cfg.Hypervisor.QEMU; q.FreePageReporting || q.TCGTBSize != 0 {
		t.Errorf("free_page_reporting %v, tcg_tb_size %d; want false, 0", q.FreePageReporting, q.TCGTBSize)
	}
}
