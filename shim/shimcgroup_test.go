package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/require"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"github.com/vmpod/vmpod/hostcgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// stdinOptions is what containerd writes to the start action's stdin for
// runtime options v: the typeurl Any, protobuf-encoded.
func stdinOptions(t *testing.T, v any) []byte {
	t.Helper()
	a, err := typeurl.MarshalAny(v)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&anypb.Any{TypeUrl: a.GetTypeUrl(), Value: a.GetValue()})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestShimCgroupOption(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stdin   []byte
		want    string
		wantErr bool
	}{
		{"no options", nil, "", false},
		{"runc options", stdinOptions(t, &runcoptions.Options{ShimCgroup: "/shims/a", BinaryName: "x"}), "/shims/a", false},
		{"runc options without a shim cgroup", stdinOptions(t, &runcoptions.Options{SystemdCgroup: true}), "", false},
		{"kata's ConfigPath options", stdinOptions(t, &runtimeoptions.Options{ConfigPath: "/etc/x.toml"}), "", false},
		{"garbage", []byte{0xff, 0xff, 0xff}, "", true},
		{"too large", bytes.Repeat([]byte{0}, maxRuntimeOptions+1), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := shimCgroupOption(bytes.NewReader(tc.stdin))
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("shimCgroupOption = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// joinShimCgroup puts the shim into the cgroup the options name, fails
// when that cgroup does not exist, and ignores unreadable options.
func TestJoinShimCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to create cgroups")
	}
	path := fmt.Sprintf("%s-shimcg", testCgroupParent)
	cg, err := hostcgroup.Create(path)
	if err != nil {
		require.Missingf(t, "cannot create cgroup %s: %v", path, err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := cg.Delete(ctx); err != nil {
			t.Error(err)
		}
	}()
	ctx := context.Background()
	pid := cmd.Process.Pid
	if err := joinShimCgroup(ctx, bytes.NewReader([]byte{0xff}), pid); err != nil {
		t.Errorf("unreadable options: %v, want them ignored", err)
	}
	err = joinShimCgroup(ctx, bytes.NewReader(stdinOptions(t, &runcoptions.Options{ShimCgroup: path + "-missing"})), pid)
	if err == nil || !strings.Contains(err.Error(), path+"-missing") {
		t.Errorf("missing shim cgroup: %v, want an error naming it", err)
	}
	if err := joinShimCgroup(ctx, bytes.NewReader(stdinOptions(t, &runcoptions.Options{ShimCgroup: path})), pid); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), ":"+path+"\n") {
		t.Errorf("process %d is not in %s:\n%s", pid, path, data)
	}
}
