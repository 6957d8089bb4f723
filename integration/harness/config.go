package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Names of containerd's CRI plugins. containerd 1.x has one, configured
// under its own name (config version 2); containerd 2.x splits it into a
// runtime, an images and a server plugin (config version 3).
const (
	criPlugin        = "io.containerd.grpc.v1.cri"    // 1.x: all of CRI; 2.x: the server (streaming)
	criRuntimePlugin = "io.containerd.cri.v1.runtime" // 2.x: runtimes, CNI, OOM score
	criImagesPlugin  = "io.containerd.cri.v1.images"  // 2.x: snapshotter, pinned (sandbox) image, registry
)

// configTOML is containerd's configuration for c.Daemon's version:
// everything under c.Dir, only the plugins a test needs.
func (c *Containerd) configTOML() (string, error) {
	disabled := []string{
		"io.containerd.internal.v1.opt",
		"io.containerd.snapshotter.v1.aufs",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.tracing.processor.v1.otlp",
		"io.containerd.internal.v1.tracing",
	}
	version := 2
	if c.Daemon.Major >= 2 {
		version = 3
		// NRI's socket is host-wide (/var/run/nri/nri.sock): one daemon's
		// would be another's.
		disabled = append(disabled, "io.containerd.nri.v1.nri")
	}
	if !c.opts.CRI {
		disabled = append(disabled, criPlugin)
		if version == 3 {
			disabled = append(disabled, criRuntimePlugin, criImagesPlugin, "io.containerd.podsandbox.controller.v1.podsandbox")
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version = %d\nroot = %q\nstate = %q\n", version, c.Root, c.State)
	snippet := c.opts.CRI && c.opts.RuntimeSnippet != ""
	if snippet && version == 3 {
		// A drop-in, as in /etc/containerd/conf.d.
		fmt.Fprintf(&b, "imports = [%q]\n", c.opts.RuntimeSnippet)
	}
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n\n", quoteList(disabled))
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n\n", c.Address)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n\n", c.Address+".ttrpc")
	fmt.Fprintf(&b, "[debug]\n  level = \"debug\"\n\n")
	if c.opts.CRI {
		if version == 3 {
			b.WriteString(c.criTOMLv3())
		} else {
			b.WriteString(c.criTOMLv2())
		}
	}
	b.WriteString(c.opts.ExtraConfig)
	if snippet && version == 2 {
		// containerd 1.x replaces a plugin's whole table with an imported
		// one: the snippet is merged into config.toml instead.
		data, err := os.ReadFile(c.opts.RuntimeSnippet)
		if err != nil {
			return "", fmt.Errorf("runtime snippet: %w", err)
		}
		b.WriteString("\n")
		b.Write(data)
	}
	return b.String(), nil
}

// CNIConfDir is the CRI plugin's CNI configuration directory (empty at
// start; CRI picks up files written there later).
func (c *Containerd) CNIConfDir() string { return filepath.Join(c.Dir, "cni") }

// cniBinDir holds the CNI plugins (Debian's containernetworking-plugins).
const cniBinDir = "/usr/lib/cni"

// criTOMLv2 configures containerd 1.x's CRI plugin.
func (c *Containerd) criTOMLv2() string {
	const p = `plugins."` + criPlugin + `"`
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]\n", p)
	// No CAP_SYS_RESOURCE for the sandbox's oom_score_adj here.
	b.WriteString("  restrict_oom_score_adj = true\n")
	b.WriteString("  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n")
	if c.opts.SandboxImage != "" {
		fmt.Fprintf(&b, "  sandbox_image = %q\n", c.opts.SandboxImage)
	}
	fmt.Fprintf(&b, "[%s.cni]\n  bin_dir = %q\n  conf_dir = %q\n", p, cniBinDir, c.CNIConfDir())
	fmt.Fprintf(&b, "[%s.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n", p)
	b.WriteString(c.runtimesTOML(p + ".containerd.runtimes"))
	if c.opts.RegistryConfigPath != "" {
		fmt.Fprintf(&b, "[%s.registry]\n  config_path = %q\n", p, c.opts.RegistryConfigPath)
	}
	b.WriteString("\n")
	return b.String()
}

// criTOMLv3 configures containerd 2.x's CRI plugins. The rest keeps
// containerd's defaults, as on a node: among them the unprivileged port
// and ICMP sysctls that 2.x adds to every pod sandbox.
func (c *Containerd) criTOMLv3() string {
	const (
		server  = `plugins."` + criPlugin + `"`
		runtime = `plugins."` + criRuntimePlugin + `"`
		images  = `plugins."` + criImagesPlugin + `"`
	)
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]\n", server)
	b.WriteString("  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n")
	fmt.Fprintf(&b, "[%s]\n  snapshotter = \"overlayfs\"\n", images)
	if c.opts.SandboxImage != "" {
		fmt.Fprintf(&b, "[%s.pinned_images]\n  sandbox = %q\n", images, c.opts.SandboxImage)
	}
	if c.opts.RegistryConfigPath != "" {
		fmt.Fprintf(&b, "[%s.registry]\n  config_path = %q\n", images, c.opts.RegistryConfigPath)
	}
	fmt.Fprintf(&b, "[%s]\n", runtime)
	// No CAP_SYS_RESOURCE for the sandbox's oom_score_adj here.
	b.WriteString("  restrict_oom_score_adj = true\n")
	fmt.Fprintf(&b, "[%s.cni]\n  bin_dirs = [%q]\n  conf_dir = %q\n", runtime, cniBinDir, c.CNIConfDir())
	fmt.Fprintf(&b, "[%s.containerd]\n  default_runtime_name = \"runc\"\n", runtime)
	b.WriteString(c.runtimesTOML(runtime + ".containerd.runtimes"))
	b.WriteString("\n")
	return b.String()
}

// runtimesTOML declares the runtime handlers runc and kata under table p,
// the same in both config versions.
func (c *Containerd) runtimesTOML(p string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n", p)
	if c.opts.RuntimeSnippet != "" {
		return b.String() // kata comes from the snippet
	}
	fmt.Fprintf(&b, "[%s.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n", p)
	if len(c.opts.KataPodAnnotations) > 0 {
		fmt.Fprintf(&b, "  pod_annotations = [%s]\n", quoteList(c.opts.KataPodAnnotations))
	}
	if c.opts.KataConfigPath != "" {
		fmt.Fprintf(&b, "[%s.kata.options]\n  ConfigPath = %q\n", p, c.opts.KataConfigPath)
	}
	return b.String()
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(q, ", ")
}
