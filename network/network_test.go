package network

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmpod/vmpod/internal/require"
	agentpb "github.com/vmpod/vmpod/proto"
)

// setup runs Setup and tears the result down when the test ends, so that a
// failing test leaves nothing behind.
func setup(t *testing.T, nsPath string) *Endpoints {
	t.Helper()
	eps, err := Setup(testCtx(t), nsPath)
	if err != nil {
		t.Fatalf("Setup(%s): %v", nsPath, err)
	}
	t.Cleanup(func() {
		if err := eps.Teardown(context.Background()); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	return eps
}

func routeStrings(rs []*agentpb.Route) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetDestination()+"|"+r.GetGateway()+"|"+r.GetDevice()+"|"+r.GetSource()+"|"+r.GetScope())
	}
	sort.Strings(out)
	return out
}

func TestSetupTeardown(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	before := stateOf(t, p.h, "eth0")
	eth0 := p.link(t, "eth0")

	eps := setup(t, p.path)
	if len(eps.List) != 1 {
		t.Fatalf("%d endpoints, want 1", len(eps.List))
	}
	ep := eps.List[0]
	if ep.HostName != "eth0" || ep.HostIndex != eth0.Attrs().Index || ep.HostType != "veth" {
		t.Errorf("endpoint host %s/%d/%s, want eth0/%d/veth", ep.HostName, ep.HostIndex, ep.HostType, eth0.Attrs().Index)
	}
	if ep.MAC.String() != before.MAC || ep.MTU != podMTU {
		t.Errorf("endpoint MAC %s MTU %d, want %s %d", ep.MAC, ep.MTU, before.MAC, podMTU)
	}
	if ep.Tap == nil {
		t.Fatal("no tap file")
	}

	// The tap: in the pod's namespace, a persistent root-owned tap with the
	// flags QEMU expects, up, with eth0's MTU.
	tl := p.link(t, "tap0"+tapSuffix)
	tap, ok := tl.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("tap0_vmpod is a %s", tl.Type())
	}
	if tap.Mode != netlink.TUNTAP_MODE_TAP || tap.Flags&netlink.TUNTAP_NO_PI == 0 || tap.Flags&netlink.TUNTAP_VNET_HDR == 0 {
		t.Errorf("tap mode %v flags %v, want tap with NO_PI|VNET_HDR", tap.Mode, tap.Flags)
	}
	if tap.NonPersist || tap.Owner != 0 {
		t.Errorf("tap persist=%v owner=%d, want persistent, owner 0", !tap.NonPersist, tap.Owner)
	}
	if tap.MTU != podMTU || tap.Flags&0 != 0 || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap MTU %d up=%v, want %d and up", tap.MTU, tap.Attrs().Flags&net.FlagUp != 0, podMTU)
	}
	if addrs, err := p.h.AddrList(tap, netlink.FAMILY_ALL); err != nil || len(addrs) != 0 {
		t.Errorf("tap addresses %v (%v), want none: the namespace must not talk on the tap", addrs, err)
	}
	if ep.TapName != tap.Name || ep.TapIndex != tap.Index {
		t.Errorf("endpoint tap %s/%d, want %s/%d", ep.TapName, ep.TapIndex, tap.Name, tap.Index)
	}
	assertRedirect(t, p.h, eth0, tap)
	assertRedirect(t, p.h, tap, eth0)

	// What the agent gets.
	want := &agentpb.Interface{Name: "eth0", Mac: before.MAC, Mtu: podMTU, Addresses: []*agentpb.IPAddress{
		{Family: "v4", Address: "10.99.0.2", PrefixLen: 24},
		{Family: "v6", Address: "fd00:99::2", PrefixLen: 64},
	}}
	got := eps.Interfaces()
	if len(got) != 1 {
		t.Fatalf("%d interfaces, want 1", len(got))
	}
	sort.Slice(got[0].Addresses, func(i, j int) bool { return got[0].Addresses[i].Family < got[0].Addresses[j].Family })
	if got[0].String() != want.String() {
		t.Errorf("interface\n got %v\nwant %v", got[0], want)
	}
	wantRoutes := []string{
		"|10.99.0.1|eth0||universe",
		"|fd00:99::1|eth0||universe",
		testRoute + "|10.99.0.1|eth0||universe",
	}
	sort.Strings(wantRoutes)
	if gr := routeStrings(eps.Routes); !reflect.DeepEqual(gr, wantRoutes) {
		t.Errorf("routes\n got %q\nwant %q", gr, wantRoutes)
	}
	// The namespace's own stack keeps eth0's addresses and routes.
	if during := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(during.Addrs, before.Addrs) || !reflect.DeepEqual(during.Routes, before.Routes) {
		t.Errorf("eth0 changed by Setup:\n before %+v\n during %+v", before, during)
	}

	if err := eps.Teardown(testCtx(t)); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertNoTaps(t, p.h)
	if after := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(after, before) {
		t.Errorf("eth0 not as CNI left it:\n before %+v\n  after %+v", before, after)
	}
	if _, err := ep.Tap.Write([]byte{0}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("tap file still open after Teardown: write: %v", err)
	}
	// Idempotent.
	if err := eps.Teardown(testCtx(t)); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
}

func TestNoNamespace(t *testing.T) {
	eps, err := Setup(context.Background(), "")
	if err != nil || eps == nil || len(eps.List) != 0 || len(eps.Routes) != 0 {
		t.Fatalf("Setup(\"\") = %+v, %v; want no endpoints, no error", eps, err)
	}
	if err := eps.Teardown(context.Background()); err != nil {
		t.Errorf("Teardown: %v", err)
	}
	if err := Cleanup(context.Background(), ""); err != nil {
		t.Errorf("Cleanup(\"\"): %v", err)
	}
}

func TestLoopbackOnly(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	path, _, h := newNS(t)
	eps := setup(t, path)
	if len(eps.List) != 0 || len(eps.Routes) != 0 {
		t.Errorf("Setup in a namespace with only lo: %+v, want no endpoints", eps)
	}
	assertNoTaps(t, h)
}

func TestMissingNamespace(t *testing.T) {
	requireRoot(t)
	path := "/run/netns/vmpt-does-not-exist"
	_, err := Setup(testCtx(t), path)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Setup(%s) error %v, want not-exist naming the path", path, err)
	}
	t.Logf("error: %v", err)
	if err := Cleanup(testCtx(t), path); err != nil {
		t.Errorf("Cleanup of a missing namespace: %v", err)
	}
	eps := &Endpoints{NSPath: path, List: []*Endpoint{{HostName: "eth0", TapName: "tap0" + tapSuffix}}}
	if err := eps.Teardown(testCtx(t)); err != nil {
		t.Errorf("Teardown in a missing namespace: %v", err)
	}
}

func TestNotANamespace(t *testing.T) {
	requireRoot(t)
	path := t.TempDir() + "/netns"
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Setup(testCtx(t), path)
	if err == nil || !strings.Contains(err.Error(), path) || !errdefs.IsInvalidArgument(err) {
		t.Errorf("Setup(%s) on a regular file: error %v, want invalid argument naming the path", path, err)
	}
	t.Logf("error: %v", err)
	// An unmounted namespace leaves such a file: nothing to tear down.
	if err := Cleanup(testCtx(t), path); err != nil {
		t.Errorf("Cleanup(%s): %v", path, err)
	}
}

func TestUnforwardableInterface(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	before := stateOf(t, p.h, "eth0")
	if err := p.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vmptbr0"}}); err != nil {
		require.Missingf(t, "cannot create a bridge here: %v", err)
	}
	_, err := Setup(testCtx(t), p.path)
	if err == nil || !strings.Contains(err.Error(), "vmptbr0") || !strings.Contains(err.Error(), `"bridge"`) {
		t.Fatalf("Setup with a bridge: error %v, want one naming vmptbr0 and its type", err)
	}
	t.Logf("error: %v", err)
	assertNoTaps(t, p.h)
	if after := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(after, before) {
		t.Errorf("eth0 changed by a failed Setup:\n before %+v\n  after %+v", before, after)
	}
}

// addMacvlan gives the pod namespace a macvlan on the peer veth, as the
// macvlan CNI plugin does: created next to its parent, then moved.
func addMacvlan(t *testing.T, p *podNet, name string) {
	t.Helper()
	parent, err := p.peerH.LinkByName(peerName)
	if err != nil {
		t.Fatal(err)
	}
	mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}
	if err := p.peerH.LinkAdd(mv); err != nil {
		require.Missingf(t, "cannot create a macvlan here: %v", err)
	}
	if err := p.peerH.LinkSetNsFd(mv, int(p.ns)); err != nil {
		t.Fatalf("move macvlan %s: %v", name, err)
	}
}

func TestMacvlan(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	addMacvlan(t, p, "net1")
	eps := setup(t, p.path)
	if len(eps.List) != 2 {
		t.Fatalf("%d endpoints, want 2", len(eps.List))
	}
	for i, want := range []struct{ host, typ string }{{"eth0", "veth"}, {"net1", "macvlan"}} {
		ep := eps.List[i]
		if ep.HostName != want.host || ep.HostType != want.typ || ep.Interface.GetName() != GuestName(i) || ep.TapName != TapName(i) {
			t.Errorf("endpoint %d: %s %s guest %s tap %s, want %s %s guest %s tap %s", i, ep.HostName, ep.HostType,
				ep.Interface.GetName(), ep.TapName, want.host, want.typ, GuestName(i), TapName(i))
		}
		assertRedirect(t, p.h, p.link(t, ep.HostName), p.link(t, ep.TapName))
		assertRedirect(t, p.h, p.link(t, ep.TapName), p.link(t, ep.HostName))
	}
	if err := eps.Teardown(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	assertNoTaps(t, p.h)
}

// TestRollback makes the second endpoint fail after the first was wired:
// a device already holds the second tap's name. Nothing may remain.
func TestRollback(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	before := stateOf(t, p.h, "eth0")
	addMacvlan(t, p, TapName(1))
	_, err := Setup(testCtx(t), p.path)
	if err == nil || !strings.Contains(err.Error(), TapName(1)) {
		t.Fatalf("Setup: error %v, want one naming %s", err, TapName(1))
	}
	t.Logf("error: %v", err)
	assertNoTaps(t, p.h)
	if after := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(after, before) {
		t.Errorf("eth0 not rolled back:\n before %+v\n  after %+v", before, after)
	}
	if has, err := hasIngress(p.h, p.link(t, TapName(1))); err != nil || has {
		t.Errorf("%s: ingress qdisc left: %v %v", TapName(1), has, err)
	}
}

func TestSetupTwice(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	setup(t, p.path)
	_, err := Setup(testCtx(t), p.path)
	if err == nil || !strings.Contains(err.Error(), TapName(0)) {
		t.Fatalf("second Setup: error %v, want one naming %s", err, TapName(0))
	}
	t.Logf("error: %v", err)
	// The first setup is untouched.
	assertRedirect(t, p.h, p.link(t, "eth0"), p.link(t, TapName(0)))
}

// TestCleanup forgets the endpoints, as a dead shim does, and removes what
// Setup left from the namespace alone.
func TestCleanup(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	before := stateOf(t, p.h, "eth0")
	eps, err := Setup(testCtx(t), p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eps.Teardown(context.Background()) }) // only if Cleanup failed
	eps.closeTaps()
	if err := Cleanup(testCtx(t), p.path); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	assertNoTaps(t, p.h)
	if after := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(after, before) {
		t.Errorf("eth0 not as CNI left it:\n before %+v\n  after %+v", before, after)
	}
	if err := Cleanup(testCtx(t), p.path); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
	// The namespace can be set up again.
	setup(t, p.path)
}

// TestCleanupOrphanFilter removes a redirect whose tap is already gone.
func TestCleanupOrphanFilter(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	before := stateOf(t, p.h, "eth0")
	eps, err := Setup(testCtx(t), p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eps.Teardown(context.Background()) })
	eps.closeTaps()
	if err := deleteTap(p.h, TapName(0), 0); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(testCtx(t), p.path); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if after := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(after, before) {
		t.Errorf("eth0 not as CNI left it:\n before %+v\n  after %+v", before, after)
	}
}

func TestCancelledContext(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Setup(ctx, p.path); !errors.Is(err, context.Canceled) {
		t.Fatalf("Setup with a cancelled context: %v, want context.Canceled", err)
	}
	assertNoTaps(t, p.h)
}

// BenchmarkSetupTeardown measures wiring one veth to a tap and undoing it,
// the network share of a pod's start and stop.
func BenchmarkSetupTeardown(b *testing.B) {
	requireRoot(b)
	p := newPodNet(b)
	ctx := context.Background()
	for b.Loop() {
		eps, err := Setup(ctx, p.path)
		if err != nil {
			b.Fatal(err)
		}
		if err := eps.Teardown(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// cancelAfter is a context whose Err turns to Canceled after n calls, to
// cancel Setup between two endpoints deterministically.
type cancelAfter struct {
	context.Context
	n atomic.Int32
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestCancelBetweenEndpoints cancels Setup after the first endpoint is
// wired: the rollback must still run and remove it.
func TestCancelBetweenEndpoints(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	addMacvlan(t, p, "net1")
	before := stateOf(t, p.h, "eth0")
	ctx := &cancelAfter{Context: context.Background()}
	ctx.n.Store(2) // Setup's first check and the first endpoint's
	if _, err := Setup(ctx, p.path); !errors.Is(err, context.Canceled) {
		t.Fatalf("Setup: %v, want context.Canceled", err)
	}
	assertNoTaps(t, p.h)
	if after := stateOf(t, p.h, "eth0"); !reflect.DeepEqual(after, before) {
		t.Errorf("eth0 not rolled back:\n before %+v\n  after %+v", before, after)
	}
}

// TestTeardownAfterCNIDel tears down after CNI DEL already removed the veth:
// only the tap is left to remove, and that is no error.
func TestTeardownAfterCNIDel(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	eps := setup(t, p.path)
	if err := p.h.LinkDel(p.link(t, "eth0")); err != nil {
		t.Fatal(err)
	}
	if err := eps.Teardown(testCtx(t)); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertNoTaps(t, p.h)
}

// TestTeardownAfterNamespaceRemoved tears down after the namespace was
// unmounted and removed: nothing is left, and that is no error.
func TestTeardownAfterNamespaceRemoved(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	eps, err := Setup(testCtx(t), p.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.DeleteNamed(filepath.Base(p.path)); err != nil {
		t.Fatal(err)
	}
	if err := eps.Teardown(testCtx(t)); err != nil {
		t.Errorf("Teardown: %v", err)
	}
	if err := Cleanup(testCtx(t), p.path); err != nil {
		t.Errorf("Cleanup: %v", err)
	}
}
