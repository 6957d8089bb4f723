package agent

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
	"github.com/vmpod/vmpod/version"
)

// ResolvConfPath is the guest's resolver configuration.
const ResolvConfPath = "/etc/resolv.conf"

// Bounds on DNS settings, as the C library reads them.
const (
	maxNameservers = 3
	maxSearches    = 6
	maxDNSOptions  = 16
)

// sandbox is what CreateSandbox set up and DestroySandbox undoes.
type sandbox struct {
	id     string
	mounts []mountSpec
}

// Check reports the agent's version and the guest kernel.
func (s *Server) Check(ctx context.Context, req *agentpb.CheckRequest) (*agentpb.CheckResponse, error) {
	return &agentpb.CheckResponse{Version: version.Version, KernelRelease: kernelRelease()}, nil
}

// CreateSandbox sets the pod's hostname and DNS and performs its mounts.
func (s *Server) CreateSandbox(ctx context.Context, req *agentpb.CreateSandboxRequest) (*agentpb.Empty, error) {
	if err := validateID("sandbox id", req.GetSandboxId()); err != nil {
		return nil, err
	}
	if h := req.GetHostname(); h != "" {
		if err := validateHostname(h); err != nil {
			return nil, err
		}
	}
	var resolv []byte
	if req.GetDns() != nil {
		var err error
		if resolv, err = resolvConf(req.GetDns()); err != nil {
			return nil, err
		}
	}
	mounts, err := ParseMounts(req.GetMounts())
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", req.GetSandboxId(), err)
	}
	s.sandboxMu.Lock()
	defer s.sandboxMu.Unlock()
	if s.sandbox != nil {
		return nil, fmt.Errorf("sandbox %s: the agent already serves sandbox %s: %w", req.GetSandboxId(), s.sandbox.id, errdefs.ErrAlreadyExists)
	}
	if err := mountAll(mounts); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", req.GetSandboxId(), err)
	}
	if err := s.setHostname(ctx, req.GetHostname()); err != nil {
		_ = unmountAll(mounts)
		return nil, err
	}
	if err := s.writeResolvConf(ctx, resolv); err != nil {
		_ = unmountAll(mounts)
		return nil, err
	}
	s.sandbox = &sandbox{id: req.GetSandboxId(), mounts: mounts}
	return &agentpb.Empty{}, nil
}

// DestroySandbox undoes the sandbox's mounts. Containers must be removed
// first.
func (s *Server) DestroySandbox(ctx context.Context, req *agentpb.DestroySandboxRequest) (*agentpb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return nil, fmt.Errorf("destroy sandbox: %d containers remain: %w", n, errdefs.ErrFailedPrecondition)
	}
	s.sandboxMu.Lock()
	defer s.sandboxMu.Unlock()
	if s.sandbox == nil {
		return &agentpb.Empty{}, nil
	}
	if err := unmountAll(s.sandbox.mounts); err != nil {
		return nil, fmt.Errorf("destroy sandbox %s: %w", s.sandbox.id, err)
	}
	s.sandbox = nil
	return &agentpb.Empty{}, nil
}

// SetHostname sets the guest's hostname.
func (s *Server) SetHostname(ctx context.Context, req *agentpb.SetHostnameRequest) (*agentpb.Empty, error) {
	if err := validateHostname(req.GetHostname()); err != nil {
		return nil, err
	}
	s.sandboxMu.Lock()
	defer s.sandboxMu.Unlock()
	return &agentpb.Empty{}, s.setHostname(ctx, req.GetHostname())
}

// SetDNS rewrites the guest's /etc/resolv.conf.
func (s *Server) SetDNS(ctx context.Context, req *agentpb.SetDNSRequest) (*agentpb.Empty, error) {
	if req.GetDns() == nil {
		return nil, fmt.Errorf("set DNS: no settings: %w", errdefs.ErrInvalidArgument)
	}
	resolv, err := resolvConf(req.GetDns())
	if err != nil {
		return nil, err
	}
	s.sandboxMu.Lock()
	defer s.sandboxMu.Unlock()
	return &agentpb.Empty{}, s.writeResolvConf(ctx, resolv)
}

// setHostname changes the hostname only in the guest; in host tests it
// only logs. s.sandboxMu must be held.
func (s *Server) setHostname(ctx context.Context, h string) error {
	if h == "" {
		return nil
	}
	if !s.cfg.Guest {
		log.G(ctx).WithField("hostname", h).Debug("not in a guest: hostname left unchanged")
		return nil
	}
	if err := unix.Sethostname([]byte(h)); err != nil {
		return fmt.Errorf("set hostname %q: %w", h, err)
	}
	return nil
}

// writeResolvConf replaces /etc/resolv.conf atomically, only in the guest.
// s.sandboxMu must be held.
func (s *Server) writeResolvConf(ctx context.Context, content []byte) error {
	if content == nil {
		return nil
	}
	if !s.cfg.Guest {
		log.G(ctx).Debug("not in a guest: resolv.conf left unchanged")
		return nil
	}
	tmp := ResolvConfPath + ".vmpod-tmp"
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, ResolvConfPath); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", ResolvConfPath, err)
	}
	return nil
}

// resolvConf validates DNS settings and renders them as resolv.conf.
func resolvConf(d *agentpb.DNS) ([]byte, error) {
	if len(d.GetNameservers()) > maxNameservers || len(d.GetSearches()) > maxSearches || len(d.GetOptions()) > maxDNSOptions {
		return nil, fmt.Errorf("DNS: at most %d nameservers, %d searches and %d options: %w", maxNameservers, maxSearches, maxDNSOptions, errdefs.ErrInvalidArgument)
	}
	var b strings.Builder
	for _, ns := range d.GetNameservers() {
		if _, err := netip.ParseAddr(ns); err != nil {
			return nil, fmt.Errorf("DNS nameserver %q: not an IP address: %w", ns, errdefs.ErrInvalidArgument)
		}
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	for _, list := range []struct {
		key    string
		values []string
	}{{"search", d.GetSearches()}, {"options", d.GetOptions()}} {
		for _, v := range list.values {
			if v == "" || len(v) > 253 || strings.ContainsAny(v, " \t\r\n#;\x00") {
				return nil, fmt.Errorf("DNS %s %q: empty, too long or with blanks: %w", list.key, v, errdefs.ErrInvalidArgument)
			}
		}
		if len(list.values) > 0 {
			fmt.Fprintf(&b, "%s %s\n", list.key, strings.Join(list.values, " "))
		}
	}
	return []byte(b.String()), nil
}

// GuestDetails describes the guest and the agent.
func (s *Server) GuestDetails(ctx context.Context, req *agentpb.GuestDetailsRequest) (*agentpb.GuestDetailsResponse, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return nil, fmt.Errorf("sysinfo: %w", err)
	}
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return &agentpb.GuestDetailsResponse{
		AgentVersion:  version.Version,
		KernelRelease: kernelRelease(),
		BootId:        strings.TrimSpace(string(bootID)),
		Cpus:          uint32(runtime.NumCPU()),
		MemoryBytes:   uint64(si.Totalram) * uint64(si.Unit),
		AgentRssBytes: selfRSS(),
		CgroupMode:    cgroupMode(),
	}, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// selfRSS reads VmRSS of /proc/self/status, in bytes.
func selfRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

func cgroupMode() string {
	switch {
	case cgroups.IsCgroup2UnifiedMode():
		return "v2"
	case cgroups.IsCgroup2HybridMode():
		return "hybrid"
	default:
		return "v1"
	}
}
