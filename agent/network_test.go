package agent

import (
	"github.com/vmpod/vmpod/internal/require"
	"os"
	"runtime"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	agentpb "github.com/vmpod/vmpod/proto"
)

// testNetwork returns a network bound to a fresh network namespace holding
// one interface, eth0 (and its veth peer); the namespace goes away with the test.
func testNetwork(t *testing.T) *network {
	if os.Getuid() != 0 {
		require.Missing(t, "creating a network namespace needs root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // also enters it
	if err != nil {
		require.Missingf(t, "no network namespaces: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	// veth, since the host may lack the dummy module.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	if peer, err := h.LinkByName("peer0"); err != nil || h.LinkSetUp(peer) != nil {
		t.Fatalf("peer0: %v", err)
	}
	return newNetwork(h)
}

func TestNetworkInterfaceAndRoutes(t *testing.T) {
	n := testNetwork(t)
	got, err := n.updateInterface(&agentpb.Interface{
		Name: "eth0", Mac: "02:00:00:aa:bb:cc", Mtu: 1400,
		Addresses: []*agentpb.IPAddress{{Family: "v4", Address: "10.1.2.3", PrefixLen: 24}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Mtu != 1400 || got.Mac != "02:00:00:aa:bb:cc" || !hasAddress(got, "10.1.2.3", 24) {
		t.Errorf("interface after update: %v", got)
	}
	// A second update replaces the addresses.
	got, err = n.updateInterface(&agentpb.Interface{Name: "eth0", Addresses: []*agentpb.IPAddress{{Family: "v4", Address: "10.1.2.4", PrefixLen: 24}}})
	if err != nil {
		t.Fatal(err)
	}
	if hasAddress(got, "10.1.2.3", 24) || !hasAddress(got, "10.1.2.4", 24) {
		t.Errorf("addresses not replaced: %v", got)
	}

	err = n.updateRoutes([]*agentpb.Route{
		{Gateway: "10.1.2.1", Device: "eth0"}, // the default route
		{Destination: "10.9.0.0/16", Gateway: "10.1.2.1", Device: "eth0"},
		{Destination: "192.168.5.0/24", Device: "eth0", Scope: "link"},
	})
	if err != nil {
		t.Fatal(err)
	}
	routes, err := n.listRoutes()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"|10.1.2.1": false, "10.9.0.0/16|10.1.2.1": false, "192.168.5.0/24|": false}
	for _, r := range routes.Routes {
		if r.Device != "eth0" {
			continue
		}
		k := r.Destination + "|" + r.Gateway
		if _, ok := want[k]; ok {
			want[k] = true
		}
	}
	for k, found := range want {
		if !found {
			t.Errorf("route %s missing from %v", k, routes.Routes)
		}
	}

	ifs, err := n.listInterfaces()
	if err != nil || len(ifs.Interfaces) != 3 { // lo, eth0, peer0
		t.Errorf("interfaces: %v %v", ifs, err)
	}
}

func TestNetworkRejects(t *testing.T) {
	n := testNetwork(t)
	for _, c := range []struct {
		name  string
		iface *agentpb.Interface
		check func(error) bool
	}{
		{"no name", &agentpb.Interface{}, errdefs.IsInvalidArgument},
		{"unknown", &agentpb.Interface{Name: "nope0"}, errdefs.IsNotFound},
		{"bad MTU", &agentpb.Interface{Name: "eth0", Mtu: 10}, errdefs.IsInvalidArgument},
		{"bad MAC", &agentpb.Interface{Name: "eth0", Mac: "zz"}, errdefs.IsInvalidArgument},
		{"bad address", &agentpb.Interface{Name: "eth0", Addresses: []*agentpb.IPAddress{{Family: "v4", Address: "x"}}}, errdefs.IsInvalidArgument},
		{"family mismatch", &agentpb.Interface{Name: "eth0", Addresses: []*agentpb.IPAddress{{Family: "v6", Address: "10.0.0.1", PrefixLen: 8}}}, errdefs.IsInvalidArgument},
		{"prefix too long", &agentpb.Interface{Name: "eth0", Addresses: []*agentpb.IPAddress{{Family: "v4", Address: "10.0.0.1", PrefixLen: 33}}}, errdefs.IsInvalidArgument},
	} {
		if _, err := n.updateInterface(c.iface); !c.check(err) {
			t.Errorf("%s: got %v", c.name, err)
		}
	}
	for _, r := range []*agentpb.Route{
		{Destination: "x", Device: "eth0"},
		{Destination: "10.0.0.0/8"},
		{Destination: "10.0.0.0/8", Device: "eth0", Scope: "galaxy"},
		{Destination: "10.0.0.0/8", Device: "eth0", Gateway: "g"},
	} {
		if err := n.updateRoutes([]*agentpb.Route{r}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("route %v: got %v", r, err)
		}
	}
}

func hasAddress(i *agentpb.Interface, addr string, prefix uint32) bool {
	for _, a := range i.Addresses {
		if a.Address == addr && a.PrefixLen == prefix {
			return true
		}
	}
	return false
}
