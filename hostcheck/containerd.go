package hostcheck

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// RuntimeType is the containerd runtime vmpod's shim answers for.
const RuntimeType = "io.containerd.kata.v2"

// ShimBinary is the binary containerd runs for RuntimeType.
const ShimBinary = "containerd-shim-kata-v2"

const maxContainerdConfig = 1 << 20

// checkContainerdConfig looks in containerd's configuration for a runtime
// whose runtime_type is RuntimeType, which the CRI plugin (Kubernetes,
// crictl) needs; ctr and nerdctl name the runtime directly and need none.
func checkContainerdConfig(path string) Result {
	const name = "containerd"
	data, err := readBounded(path, maxContainerdConfig)
	if errors.Is(err, os.ErrNotExist) {
		return Result{Name: name, Status: Warn,
			Reason: fmt.Sprintf("no %s: CRI pods cannot select vmpod (ctr --runtime %s works without it)", path, RuntimeType),
			Fix:    "create " + path + " with:\nversion = 2\n" + runtimeSnippet(2)}
	}
	if err != nil {
		return Result{Name: name, Status: Warn, Reason: err.Error(), Fix: "check containerd's configuration file"}
	}
	r := containerdRuntimes(path, data)
	if r.Status == Pass {
		return r
	}
	// containerd 2.x's drop-ins (/etc/containerd/conf.d/*.toml) are files
	// that config.toml imports.
	for _, imp := range importedFiles(path, data) {
		d, err := readBounded(imp, maxContainerdConfig)
		if err != nil {
			continue
		}
		if ri := containerdRuntimes(imp, d); ri.Status == Pass {
			return ri
		}
	}
	return r
}

// importedFiles lists the files that containerd's configuration at path
// imports (`imports`, a list of paths or globs, relative ones to the file's
// directory), as containerd resolves them; only the first level.
func importedFiles(path string, data []byte) []string {
	var doc struct {
		Imports []string `toml:"imports"`
	}
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return nil
	}
	var out []string
	for _, imp := range doc.Imports {
		imp = filepath.Clean(imp)
		if !filepath.IsAbs(imp) {
			imp = filepath.Join(filepath.Dir(path), imp)
		}
		if !strings.Contains(imp, "*") {
			out = append(out, imp)
			continue
		}
		matches, _ := filepath.Glob(imp)
		out = append(out, matches...)
	}
	return out
}

// containerdRuntimes is checkContainerdConfig on the file's contents.
func containerdRuntimes(path string, data []byte) Result {
	const name = "containerd"
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return Result{Name: name, Status: Warn, Reason: fmt.Sprintf("%s: %v", path, err),
			Fix: "fix containerd's configuration file: containerd itself will refuse it"}
	}
	version := int64(1)
	if v, ok := doc["version"].(int64); ok {
		version = v
	}
	var found []string
	findRuntimes(doc, nil, &found)
	if len(found) == 0 {
		fix := "add to " + path + " and restart containerd:\n" + runtimeSnippet(version)
		if version >= 3 {
			fix += "\n(or install PREFIX/share/vmpod/containerd-v3.toml in /etc/containerd/conf.d/, which config.toml must import)"
		}
		return Result{Name: name, Status: Warn,
			Reason: fmt.Sprintf("no runtime with runtime_type = %q in %s or the files it imports: CRI pods cannot select vmpod (ctr --runtime %s works without it)", RuntimeType, path, RuntimeType),
			Fix:    fix}
	}
	return Result{Name: name, Status: Pass, Reason: fmt.Sprintf("%s in %s", strings.Join(found, ", "), path)}
}

// findRuntimes collects the dotted paths of the tables whose runtime_type
// is RuntimeType, wherever they are: the CRI plugin's table has moved
// between containerd's configuration versions.
func findRuntimes(t map[string]any, at []string, found *[]string) {
	if rt, ok := t["runtime_type"].(string); ok && rt == RuntimeType {
		*found = append(*found, tomlPath(at))
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if sub, ok := t[k].(map[string]any); ok {
			findRuntimes(sub, append(slices.Clone(at), k), found)
		}
	}
}

// tomlPath writes a key path as TOML does, quoting keys with dots.
func tomlPath(keys []string) string {
	if len(keys) == 0 {
		return "the top level"
	}
	parts := make([]string, len(keys))
	for i, k := range keys {
		if strings.ContainsAny(k, ". \"") {
			parts[i] = fmt.Sprintf("%q", k)
		} else {
			parts[i] = k
		}
	}
	return strings.Join(parts, ".")
}

// runtimeSnippet is the runtime table for containerd's configuration
// version (1 and 2: containerd 1.x; 3 and 4: containerd 2.x). make install
// puts commented files in PREFIX/share/vmpod: containerd.toml (version 2)
// and containerd-v3.toml (version 3, a drop-in).
func runtimeSnippet(version int64) string {
	plugin := `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata`
	switch {
	case version <= 1:
		plugin = "plugins.cri.containerd.runtimes.kata"
	case version >= 3:
		plugin = `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata`
	}
	return fmt.Sprintf("[%s]\n  runtime_type = %q", plugin, RuntimeType)
}

// checkShimBinary looks for the shim on PATH, where containerd looks for
// it (besides containerd's own directory).
func checkShimBinary() Result {
	p, err := exec.LookPath(ShimBinary)
	if err != nil {
		return Result{Name: "shim", Status: Warn, Reason: fmt.Sprintf("%s is not on PATH: %v", ShimBinary, err),
			Fix: "make build install (PREFIX/bin), or put " + ShimBinary + " on containerd's PATH"}
	}
	return Result{Name: "shim", Status: Pass, Reason: p}
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}
