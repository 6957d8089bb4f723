package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/require"
)

// Test network: a "pod" namespace holding eth0 as CNI's bridge plugin would
// leave it, and a "peer" namespace holding the other end of the veth (where
// the bridge would be).
const (
	podIP     = "10.99.0.2/24"
	peerIP    = "10.99.0.1/24"
	podIP6    = "fd00:99::2/64"
	peerIP6   = "fd00:99::1"
	podMTU    = 1400
	peerName  = "vmptpeer0"
	testRoute = "10.100.0.0/16"
)

var nsCounter atomic.Int64

// requireRoot skips tests that need to create namespaces and devices.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		require.Missing(t, "needs root to create network namespaces, veths and taps")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		require.Missingf(t, "needs /dev/net/tun: %v", err)
	}
}

// checkLeaks fails the test if a network namespace or a test device is left
// in the test's own namespace (a tap created in the wrong namespace would
// show up here).
func checkLeaks(t *testing.T) {
	leakcheck.Check(t, leakcheck.Options{LinkPrefixes: []string{"vmpt", "tap0" + tapSuffix, "tap1" + tapSuffix}, NetnsPrefixes: []string{"vmpt"}})
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newNS creates a named network namespace and a netlink handle in it, both
// removed when the test ends. It returns the namespace's path.
func newNS(t testing.TB) (string, netns.NsHandle, *netlink.Handle) {
	t.Helper()
	name := fmt.Sprintf("vmpt-%d-%d", os.Getpid(), nsCounter.Add(1))
	type result struct {
		ns  netns.NsHandle
		err error
	}
	done := make(chan result, 1)
	// NewNamed moves the calling thread into the new namespace: do it on a
	// locked thread that moves back, or dies if it cannot.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if serr := netns.Set(orig); serr != nil {
			done <- result{err: fmt.Errorf("restore namespace: %w", serr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{ns, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("create network namespace %s: %v", name, r.err)
	}
	t.Cleanup(func() {
		r.ns.Close()
		if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
			return // the test removed it
		}
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(r.ns)
	if err != nil {
		t.Fatalf("netlink in %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	return filepath.Join("/run/netns", name), r.ns, h
}

// podNet is the test network.
type podNet struct {
	path   string // pod namespace
	ns     netns.NsHandle
	h      *netlink.Handle
	peerNS netns.NsHandle
	peerH  *netlink.Handle
}

// newPodNet builds the pod and peer namespaces joined by a veth, with eth0
// carrying an IPv4 and an IPv6 address, a default route for each family and
// one more static route.
func newPodNet(t testing.TB) *podNet {
	t.Helper()
	p := &podNet{}
	p.path, p.ns, p.h = newNS(t)
	_, p.peerNS, p.peerH = newNS(t)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "eth0", MTU: podMTU},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(p.peerNS),
	}
	if err := p.h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	eth0 := p.link(t, "eth0")
	peer, err := p.peerH.LinkByName(peerName)
	if err != nil {
		t.Fatalf("peer: %v", err)
	}
	mustAddr(t, p.peerH, peer, peerIP)
	mustAddr(t, p.h, eth0, podIP)
	mustAddr(t, p.h, eth0, podIP6)
	for _, l := range []struct {
		h *netlink.Handle
		l netlink.Link
	}{{p.peerH, peer}, {p.h, eth0}} {
		if err := l.h.LinkSetUp(l.l); err != nil {
			t.Fatalf("up %s: %v", l.l.Attrs().Name, err)
		}
	}
	idx := eth0.Attrs().Index
	for _, r := range []*netlink.Route{
		{LinkIndex: idx, Gw: net.ParseIP("10.99.0.1")},
		{LinkIndex: idx, Dst: mustCIDR(t, testRoute), Gw: net.ParseIP("10.99.0.1")},
		{LinkIndex: idx, Gw: net.ParseIP(peerIP6)},
	} {
		if err := p.h.RouteAdd(r); err != nil {
			t.Fatalf("add route %v: %v", r, err)
		}
	}
	return p
}

func (p *podNet) link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := p.h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func mustCIDR(t testing.TB, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func mustAddr(t testing.TB, h *netlink.Handle, l netlink.Link, cidr string) {
	t.Helper()
	// NODAD: the address is usable at once, as a routed gateway needs.
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: mustCIDR(t, cidr), Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatalf("add address %s to %s: %v", cidr, l.Attrs().Name, err)
	}
}

// linkState is what CNI configured on an interface, for checking that
// vmpod leaves it as it found it.
type linkState struct {
	Index  int
	MAC    string
	MTU    int
	Up     bool
	Addrs  []string
	Routes []string
	Qdiscs []string
}

func stateOf(t testing.TB, h *netlink.Handle, name string) linkState {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	a := l.Attrs()
	s := linkState{Index: a.Index, MAC: a.HardwareAddr.String(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if !ad.IP.IsLinkLocalUnicast() {
			s.Addrs = append(s.Addrs, ad.IPNet.String())
		}
	}
	routes, err := h.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, fmt.Sprintf("%v via %v", r.Dst, r.Gw))
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		s.Qdiscs = append(s.Qdiscs, q.Type())
	}
	sort.Strings(s.Addrs)
	sort.Strings(s.Routes)
	sort.Strings(s.Qdiscs)
	return s
}

// assertRedirect checks that from has an ingress qdisc whose filters
// redirect to to, and only there.
func assertRedirect(t testing.TB, h *netlink.Handle, from, to netlink.Link) {
	t.Helper()
	has, err := hasIngress(h, from)
	if err != nil || !has {
		t.Fatalf("%s: ingress qdisc: has=%v err=%v", from.Attrs().Name, has, err)
	}
	fs, err := h.FilterList(from, ingressHandle)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) == 0 {
		t.Fatalf("%s: no ingress filter", from.Attrs().Name)
	}
	var mirred int
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			t.Errorf("%s: filter %s, want u32", from.Attrs().Name, f.Type())
			continue
		}
		if u.Attrs().Protocol != unix.ETH_P_ALL {
			t.Errorf("%s: filter protocol %#x, want all", from.Attrs().Name, u.Attrs().Protocol)
		}
		for _, a := range u.Actions {
			m, ok := a.(*netlink.MirredAction)
			if !ok {
				continue
			}
			mirred++
			if m.MirredAction != netlink.TCA_EGRESS_REDIR || m.Ifindex != to.Attrs().Index {
				t.Errorf("%s: mirred %v to %d, want egress redirect to %s (%d)", from.Attrs().Name, m.MirredAction, m.Ifindex, to.Attrs().Name, to.Attrs().Index)
			}
		}
	}
	if mirred != 1 {
		t.Errorf("%s: %d mirred actions, want 1", from.Attrs().Name, mirred)
	}
}

// assertNoTaps checks that the namespace holds no tun/tap device.
func assertNoTaps(t testing.TB, h *netlink.Handle) {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); ok {
			t.Errorf("tap %s left in the namespace", l.Attrs().Name)
		}
	}
}
