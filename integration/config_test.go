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
// beats $VMPOD_CONFIG. No VM boots: the configuration is refused first.
func TestConfigErrorsReachCtr(t *testing.T) {
	if err := harness.Requirements(); err != nil {
		require.Missing(t, err)
	}
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env.toml")
	optFile := filepath.Join(dir, "option.toml")
	for path, content := range map[string]string{
		envFile: "[hypervisor.qemu]\nfrom_env = 1\n",
		optFile: "[hypervisor.qemu]\ndefault_memory = -512\n",
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
