package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/integration/harness"
	"github.com/vmpod/vmpod/internal/require"
)

// TestConfigErrorsReachCtr runs the real shim under the real containerd
// with broken configuration files: the container must not start, the
// error ctr prints must name the bad key and the file it is in, and
// nothing may be left behind. It also shows the precedence through
// containerd: the runtime option ConfigPath (ctr --runtime-config-path)
// beats $VMPOD_CONFIG. No VM boots: the configuration is refused first. A
// kernel that lacks vsock and virtio-fs is refused at sandbox start, with
// an error that names them, before any VM boots.
func TestConfigErrorsReachCtr(t *testing.T) {
	if err := harness.Requirements(); err != nil {
		require.Missing(t, err)
	}
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env.toml")
	optFile := filepath.Join(dir, "option.toml")
	// A kernel whose configuration lacks vsock and virtio-fs: refused at
	// sandbox start, naming what it lacks, before QEMU boots it.
	bz := make([]byte, 0x400)
	copy(bz[0x202:], "HdrS")
	kernel, initrd := filepath.Join(dir, "kernel"), filepath.Join(dir, "initrd")
	kernelFile := filepath.Join(dir, "kernel.toml")
	for path, content := range map[string]string{
		envFile:            "[hypervisor.qemu]\nfrom_env = 1\n",
		optFile:            "[hypervisor.qemu]\ndefault_memory = -512\n",
		kernel:             string(bz),
		kernel + ".config": "CONFIG_VIRTIO_PCI=y\nCONFIG_OVERLAY_FS=y\nCONFIG_MEMCG=y\nCONFIG_SECCOMP_FILTER=y\nCONFIG_BLK_DEV_INITRD=y\n",
		initrd:             "initrd",
		kernelFile:         "[hypervisor.qemu]\nkernel = \"" + kernel + "\"\ninitrd = \"" + initrd + "\"\n",
	} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shim := harness.Shim(t)
	c := harness.StartContainerd(t, harness.Options{ShimPath: shim, VMPODConfig: envFile})
	ref := harness.ImportBusybox(t, c)

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"VMPOD_CONFIG", nil, []string{"hypervisor.qemu.from_env", envFile}},
		{"ConfigPath beats VMPOD_CONFIG", []string{"--runtime-config-path", optFile}, []string{"hypervisor.qemu.default_memory", optFile, "negative"}},
		{"kernel without vsock", []string{"--runtime-config-path", kernelFile}, []string{"kernel " + kernel, "lacks", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_VIRTIO_FS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			args := append([]string{"run", "--rm", "--runtime", "io.containerd.kata.v2"}, tc.args...)
			args = append(args, ref, "badconfig", "echo", "hi")
			out, _, err := c.Ctr(ctx, args...)
			if err == nil {
				t.Fatalf("container ran with a broken configuration; stdout %q", out)
			}
			t.Logf("refused as expected: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			// A failed run leaves the container record (ctr deletes it
			// only after a run that started); remove it as a user would.
			_, _, _ = c.Ctr(ctx, "tasks", "delete", "--force", "badconfig")
			if _, _, err := c.Ctr(ctx, "containers", "delete", "badconfig"); err != nil && !strings.Contains(err.Error(), "not found") {
				t.Error(err)
			}
			c.AssertClean(t)
		})
	}
}
