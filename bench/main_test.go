package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpod/vmpod/config"
	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/require"
	"github.com/vmpod/vmpod/internal/testbin"
	"github.com/vmpod/vmpod/kernel/kernelcheck"
)

// Flags; `make bench` sets them. Empty paths mean "build from this tree".
var (
	runsFlag   = flag.Int("runs", envInt("BENCH_RUNS", 3), "runs per figure (default $BENCH_RUNS, else 3)")
	reportPath = flag.String("report", "", "write the markdown report to this file")
	shimPath   = flag.String("shim", "", "containerd-shim-kata-v2 binary (default: built from this tree)")
	kernelPath = flag.String("kernel", "", "guest kernel (default: the installed cloud kernel)")
	stockPath  = flag.String("stock-kernel", "", "Debian's cloud kernel for the stock floor, as make image ships it (default: the installed one's uncompressed vmlinux)")
	initrdPath = flag.String("initrd", "", "guest initrd with the agent (default: built from this tree)")
	machine    = flag.String("machine", hypervisor.MachineQ35, "machine type of the pod VMs and the floor")
	memoryMiB  = flag.Int("memory", 256, "guest memory in MiB")
	vcpus      = flag.Int("vcpus", 1, "guest vCPUs")
	densityN   = flag.Int("density", 16, "containers started at once for the density figure")
	stdoutMiB  = flag.Int("stdout-mib", 256, "MiB streamed to stdout per run")
	shimProf   = flag.String("shim-profile", "", "turn the shim's [runtime] enable_pprof on and write its CPU profile over the first vmpod stdout run to this file (and its goroutines, mid-stream, to this file + .goroutines)")
	agentPath  = flag.String("agent", "", "static vmpod-agent for the agent-sized floor initrd (default: built from this tree)")
	fprFlag    = flag.String("free-page-reporting", "", "[hypervisor.qemu] free_page_reporting of the pod VMs and the agent guest: true or false (default: configuration.toml's)")
	tbSizeFlag = flag.Int("tcg-tb-size", -1, "[hypervisor.qemu] tcg_tb_size of the pod VMs and the agent guest, MiB (default: configuration.toml's)")
)

// memoryTOML is the [hypervisor.qemu] lines the memory flags set, for the
// pods' configuration file; empty when they are left at their defaults.
func memoryTOML() string {
	var s string
	if *fprFlag != "" {
		s += "free_page_reporting = " + *fprFlag + "\n"
	}
	if *tbSizeFlag >= 0 {
		s += fmt.Sprintf("tcg_tb_size = %d\n", *tbSizeFlag)
	}
	return s
}

// memorySettings is what the pods run with: configuration.toml's
// free_page_reporting and tcg_tb_size under the flags, read the way the
// shim reads them.
func memorySettings(b *testing.B) config.QEMU {
	p := filepath.Join(b.TempDir(), "memory.toml")
	if err := os.WriteFile(p, []byte("[hypervisor.qemu]\n"+memoryTOML()), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		b.Fatalf("-free-page-reporting, -tcg-tb-size: %v", err)
	}
	memoryUsed.Store(fmt.Sprintf("free_page_reporting %v, tcg_tb_size %d MiB", cfg.Hypervisor.QEMU.FreePageReporting, cfg.Hypervisor.QEMU.TCGTBSize))
	return cfg.Hypervisor.QEMU
}

// memoryUsed is memorySettings' last answer, for the report.
var memoryUsed atomic.Value

// kernelParams go to every guest of the run, pods and floors alike, on top
// of the QEMU driver's own (which include no_timer_check: see
// docs/performance.md). None are needed now.
var kernelParams []string

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// results is what this run measured; TestMain prints and writes it.
var results = &report{}

func TestMain(m *testing.M) {
	flag.Parse()
	if err := checkFlags(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	results.date = time.Now()
	results.runs = *runsFlag
	// The tree's version as it was when the run started: others may
	// commit while it runs.
	version := commandLine(context.Background(), "..", "git", "describe", "--tags", "--always", "--dirty")
	code := m.Run()
	if len(results.rows) > 0 || len(results.notes) > 0 {
		if err := finishReport(version); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			code = 1
		}
	}
	imagetest.Cleanup()
	os.Exit(code)
}

// checkFlags rejects values no run could measure with.
func checkFlags() error {
	for _, f := range []struct {
		name     string
		val, min int
	}{{"runs", *runsFlag, 1}, {"density", *densityN, 1}, {"stdout-mib", *stdoutMiB, 1}, {"vcpus", *vcpus, 1}, {"memory", *memoryMiB, 64}} {
		if f.val < f.min {
			return fmt.Errorf("-%s %d: want at least %d", f.name, f.val, f.min)
		}
	}
	return nil
}

// finishReport adds the facts about this run, prints the table and writes
// the markdown file.
func finishReport(version string) error {
	ctx := context.Background()
	for _, f := range machineFacts() {
		results.fact(f[0], f[1])
	}
	results.fact("accel", accelFact())
	results.fact("vmpod", version)
	results.mu.Lock()
	results.commit = version
	results.mu.Unlock()
	results.fact("QEMU", commandLine(ctx, "", imagetest.QEMUPath, "--version"))
	results.fact("containerd", commandLine(ctx, "", "containerd", "--version"))
	results.fact("runc", commandLine(ctx, "", "runc", "--version"))
	results.fact("guest kernel", guestKernelFact())
	if stockUsed != "" {
		results.fact("stock kernel (stock floor)", stockUsed)
	}
	results.fact("VM", fmt.Sprintf("machine %s, %d vCPU, %d MiB, vsock: %s, virtio-fs (virtiofsd), kernel parameters %q, agent dial timeout %s, shim debug log on",
		*machine, *vcpus, *memoryMiB, vsockMode(), kernelParams, dialTimeout))
	if m, ok := memoryUsed.Load().(string); ok {
		results.fact("VM memory settings (pods, agent guest)", m)
	}
	results.fact("Go", commandLine(ctx, "", "go", "version"))
	if err := results.writeText(os.Stdout); err != nil {
		return err
	}
	if *reportPath == "" {
		return nil
	}
	f, err := os.Create(*reportPath)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := results.writeMarkdown(f); err != nil {
		f.Close()
		return fmt.Errorf("report %s: %w", *reportPath, err)
	}
	return f.Close()
}

// accel is what the pod VMs and the floor both use: KVM where it works,
// else TCG, by the same rule as the shim's "auto".
func accel() (string, string) {
	a, reason, err := hypervisor.ChooseAccel(hypervisor.AccelAuto, hypervisor.HostInfo())
	if err != nil {
		return hypervisor.AccelTCG, err.Error()
	}
	return a, reason
}

func accelFact() string {
	a, reason := accel()
	return fmt.Sprintf("%s (%s)", a, reason)
}

// vsockMode is the vsock the shim's "auto" picks here.
func vsockMode() string {
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		return "kernel vhost-vsock"
	}
	return "vmpod's vhost-user backend in the shim"
}

// guestKernel is the release reported by the agent, if a benchmark asked
// it, else the newest installed cloud kernel's.
var guestKernel string

func guestKernelFact() string {
	if guestKernel != "" {
		return fmt.Sprintf("%s (reported by the agent), %s", guestKernel, *kernelPath)
	}
	if *kernelPath != "" {
		return *kernelPath
	}
	r, err := image.DefaultRelease()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return r
}

// floorInitrd returns an initrd around the floor's init for kernel: with
// the boot modules when the kernel loads modules (they are loaded, with
// vmpod_testinit=modules on the command line), without for a kernel with
// everything built in; extra files ride along.
func floorInitrd(b *testing.B, kernel, name string, extra map[string]string) string {
	b.Helper()
	rep, err := kernelcheck.Check(kernel)
	if err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), name)
	_, err = image.BuildInitrd(image.Options{
		Init:       testbin.Build(b, "./image/internal/testinit", true),
		ExtraFiles: extra,
		NoModules:  rep.ConfigFrom != "" && !rep.Modules,
		Output:     out,
	})
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// stockKernel is Debian's cloud kernel as make image ships it (its
// uncompressed vmlinux, booted by its PVH entry), for the stock floor.
func stockKernel(b *testing.B) string {
	b.Helper()
	if *stockPath != "" {
		stockUsed = *stockPath
		return *stockPath
	}
	k, err := image.FindKernel("")
	if err != nil {
		require.Missing(b, err)
	}
	stockUsed = k
	out := filepath.Join(b.TempDir(), "stock-vmlinux")
	if err := image.ExtractVmlinux(k, out); err != nil {
		if errors.Is(err, image.ErrNoPVH) {
			return k
		}
		b.Fatal(err)
	}
	stockUsed = k + " (its uncompressed vmlinux, PVH entry)"
	return out
}

// stockUsed is the stock floor's kernel, for the report.
var stockUsed string

// guestImage returns the kernel and the agent's initrd the pods boot.
func guestImage(b *testing.B) (kernel, initrd string) {
	b.Helper()
	imagetest.Require(b)
	kernel, initrd = *kernelPath, *initrdPath
	if kernel == "" {
		kernel = imagetest.Kernel(b)
	}
	if initrd == "" {
		initrd = imagetest.AgentInitrd(b)
	}
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			b.Fatalf("guest image: %v", err)
		}
	}
	return kernel, initrd
}

// vmConfig is a VM like the shim's pod VMs, for the agent and floor
// measurements that bypass containerd.
func vmConfig(b *testing.B, kernel, initrd string) hypervisor.Config {
	a, _ := accel()
	return hypervisor.Config{
		ID: "bench", Path: imagetest.QEMUPath, Kernel: kernel, Initrd: initrd,
		Machine: *machine, Accel: a, VCPUs: *vcpus, MemoryMiB: *memoryMiB, KernelParams: kernelParams,
		StateDir: filepath.Join(b.TempDir(), "state"),
	}
}

// samples collects the runs of one figure.
type samples []float64

func (s *samples) add(v float64) { *s = append(*s, v) }

func (s samples) summary() summary { return summarize(s) }

// lookPath fails b unless the command exists.
func lookPath(b *testing.B, name string) {
	b.Helper()
	if _, err := exec.LookPath(name); err != nil {
		require.Missingf(b, "needs %s: %v", name, err)
	}
}
