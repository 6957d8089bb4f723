package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vmpod/vmpod/internal/testbin"
)

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m))
}

// featuresTypeURL is what containerd 2.x unmarshals RuntimeInfo.Features
// by (core/runtime/typeurl.go).
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// runInfo runs the shim binary the way containerd 2.x does
// (core/runtime/v2/task_manager.go getRuntimeInfo): `-info`, the options
// on stdin, the RuntimeInfo protobuf on stdout.
func runInfo(t *testing.T, bin string, stdin []byte) (*types.RuntimeInfo, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-info")
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stderr = &stderr
	// No containerd environment: -info must need none.
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		return nil, stderr.String(), err
	}
	var info types.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil {
		t.Fatalf("stdout is not a RuntimeInfo: %v", err)
	}
	return &info, stderr.String(), nil
}

// TestInfo: the shim, built as the Makefile builds it (no cgo), answers
// `-info` with its name, the options it was given, and runtime-spec
// features that make containerd 2.x's CRI report recursive read-only
// mounts for the handler, and no idmapped mounts.
func TestInfo(t *testing.T) {
	t.Setenv("CGO_ENABLED", "0")
	bin := testbin.Build(t, "./cmd/containerd-shim-kata-v2", false)

	opts, err := anypb.New(&runtimeoptions.Options{ConfigPath: "/etc/vmpod/configuration.toml"})
	if err != nil {
		t.Fatal(err)
	}
	optsB, err := proto.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	info, stderr, err := runInfo(t, bin, optsB)
	if err != nil {
		t.Fatalf("-info: %v: %s", err, stderr)
	}
	if info.Name != RuntimeName {
		t.Errorf("name %q, want %q", info.Name, RuntimeName)
	}
	if info.Version.GetVersion() == "" {
		t.Error("no version")
	}
	if !proto.Equal(info.Options, opts) {
		t.Errorf("options %v, want those given, %v", info.Options, opts)
	}
	if got := info.Features.GetTypeUrl(); got != featuresTypeURL {
		t.Fatalf("features type URL %q, want %q", got, featuresTypeURL)
	}
	var f features.Features
	if err := json.Unmarshal(info.Features.GetValue(), &f); err != nil {
		t.Fatalf("features are not runtime-spec features JSON: %v", err)
	}
	if !slices.Contains(f.MountOptions, "rro") {
		t.Errorf("mount options %v lack rro", f.MountOptions)
	}
	for _, o := range []string{"idmap", "ridmap"} {
		if slices.Contains(f.MountOptions, o) {
			t.Errorf("mount options list %s", o)
		}
	}
	if f.Linux == nil || !slices.Contains(f.Linux.Namespaces, "user") {
		t.Fatalf("no user namespace in %+v", f.Linux)
	}
	if m := f.Linux.MountExtensions; m == nil || m.IDMap == nil || m.IDMap.Enabled == nil || *m.IDMap.Enabled {
		t.Errorf("idmapped mounts not said to be off: %+v", m)
	}
	if c := f.Linux.Cgroup; c == nil || c.V2 == nil || !*c.V2 || c.V1 == nil || *c.V1 {
		t.Errorf("cgroup features %+v, want v2 only", c)
	}

	// containerd sends nothing when the runtime has no options.
	info, stderr, err = runInfo(t, bin, nil)
	if err != nil {
		t.Fatalf("-info without options: %v: %s", err, stderr)
	}
	if info.Options != nil || info.Features == nil {
		t.Errorf("without options: options %v, features %v", info.Options, info.Features)
	}

	if _, stderr, err := runInfo(t, bin, []byte{0xff, 0xff}); err == nil {
		t.Error("-info accepted options that are not a protobuf Any")
	} else if !strings.Contains(stderr, "not a protobuf Any") {
		t.Errorf("stderr %q does not say what was wrong", stderr)
	}
}

func TestInfoRequested(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"-info"}, true},
		{[]string{"--info"}, true},
		{[]string{"-namespace", "k8s.io", "-id", "x", "start"}, false},
		{[]string{"-v"}, false},
		{nil, false},
	} {
		if got := infoRequested(c.args); got != c.want {
			t.Errorf("infoRequested(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
