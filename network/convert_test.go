package network

import (
	"net"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

func cidr(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestConvertInterface(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:0a:58:00:02")
	attrs := &netlink.LinkAttrs{Name: "eth0", HardwareAddr: mac, MTU: 1450}
	addrs := []netlink.Addr{
		{IPNet: cidr(t, "10.88.0.2/16")},
		{IPNet: cidr(t, "fd00::2/64")},
		{IPNet: cidr(t, "fe80::42:aff:fe58:2/64")}, // left to the guest kernel
		{IPNet: cidr(t, "169.254.1.2/16")},         // IPv4 link-local is CNI's, kept
		{},                                         // no address: ignored
	}
	got := convertInterface("eth1", attrs, addrs)
	want := &agentpb.Interface{Name: "eth1", Mac: "02:42:0a:58:00:02", Mtu: 1450, Addresses: []*agentpb.IPAddress{
		{Family: "v4", Address: "10.88.0.2", PrefixLen: 16},
		{Family: "v6", Address: "fd00::2", PrefixLen: 64},
		{Family: "v4", Address: "169.254.1.2", PrefixLen: 16},
	}}
	if got.String() != want.String() {
		t.Errorf("convertInterface\n got %v\nwant %v", got, want)
	}
}

func TestConvertRoutes(t *testing.T) {
	names := map[int]string{2: "eth0", 3: "eth1"}
	routes := []netlink.Route{
		// ip route add default via 10.88.0.1 dev eth0
		{LinkIndex: 2, Gw: net.ParseIP("10.88.0.1"), Table: mainTable, Protocol: unix.RTPROT_BOOT, Type: unix.RTN_UNICAST},
		// the kernel's connected route: the guest makes its own
		{LinkIndex: 2, Dst: cidr(t, "10.88.0.0/16"), Src: net.ParseIP("10.88.0.2"), Scope: netlink.SCOPE_LINK, Table: mainTable, Protocol: unix.RTPROT_KERNEL},
		// a static on-link route with a source
		{LinkIndex: 3, Dst: cidr(t, "192.168.5.0/24"), Src: net.ParseIP("192.168.5.9"), Scope: netlink.SCOPE_LINK, Table: mainTable, Protocol: unix.RTPROT_STATIC},
		// IPv6 default given as ::/0
		{LinkIndex: 2, Dst: cidr(t, "::/0"), Gw: net.ParseIP("fd00::1"), Table: mainTable, Protocol: unix.RTPROT_BOOT},
		// learnt from router advertisements: the guest learns its own
		{LinkIndex: 2, Gw: net.ParseIP("fe80::1"), Table: mainTable, Protocol: unix.RTPROT_RA},
		// IPv6 link-local and multicast: the guest's own
		{LinkIndex: 2, Dst: cidr(t, "fe80::/64"), Table: mainTable, Protocol: unix.RTPROT_BOOT},
		{LinkIndex: 2, Dst: cidr(t, "ff00::/8"), Table: mainTable, Protocol: unix.RTPROT_BOOT},
		// another table: not the guest's business
		{LinkIndex: 2, Dst: cidr(t, "10.1.0.0/16"), Table: 100, Protocol: unix.RTPROT_BOOT},
		// 0.0.0.0/0 written out
		{LinkIndex: 3, Dst: cidr(t, "0.0.0.0/0"), Gw: net.ParseIP("192.168.5.1"), Table: mainTable, Protocol: unix.RTPROT_STATIC},
	}
	got, err := convertRoutes(routes, names)
	if err != nil {
		t.Fatal(err)
	}
	want := []*agentpb.Route{
		{Gateway: "10.88.0.1", Device: "eth0", Scope: "universe"},
		{Destination: "192.168.5.0/24", Device: "eth1", Source: "192.168.5.9", Scope: "link"},
		{Gateway: "fd00::1", Device: "eth0", Scope: "universe"},
		{Gateway: "192.168.5.1", Device: "eth1", Scope: "universe"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d routes, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].String() != want[i].String() {
			t.Errorf("route %d\n got %v\nwant %v", i, got[i], want[i])
		}
	}
}

func TestConvertRoutesRefused(t *testing.T) {
	names := map[int]string{2: "eth0"}
	for _, tc := range []struct {
		name  string
		route netlink.Route
		want  string
	}{
		{"multipath", netlink.Route{Dst: cidr(t, "10.2.0.0/16"), MultiPath: []*netlink.NexthopInfo{{LinkIndex: 2}}}, "10.2.0.0/16: multipath"},
		{"blackhole", netlink.Route{Dst: cidr(t, "10.3.0.0/16"), Type: unix.RTN_BLACKHOLE}, "10.3.0.0/16: type"},
		{"other device", netlink.Route{LinkIndex: 7, Gw: net.ParseIP("10.0.0.1")}, "default: device index 7"},
		{"site scope", netlink.Route{LinkIndex: 2, Dst: cidr(t, "10.4.0.0/16"), Scope: netlink.SCOPE_SITE}, "10.4.0.0/16: scope 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := convertRoutes([]netlink.Route{tc.route}, names)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestNamespacePath(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec *specs.Spec
		want string
	}{
		{"nil spec", nil, ""},
		{"no linux", &specs.Spec{}, ""},
		{"host network", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}, ""},
		{"new namespace", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}, ""},
		{"CNI namespace", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace},
			{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1234"},
		}}}, "/var/run/netns/cni-1234"},
	} {
		if got := NamespacePath(tc.spec); got != tc.want {
			t.Errorf("%s: NamespacePath = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestNames(t *testing.T) {
	if GuestName(0) != "eth0" || GuestName(3) != "eth3" {
		t.Errorf("GuestName: %s %s", GuestName(0), GuestName(3))
	}
	if n := TapName(12); n != "tap12_vmpod" || len(n) >= unix.IFNAMSIZ {
		t.Errorf("TapName(12) = %q", n)
	}
}
