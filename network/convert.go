package network

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

const mainTable = unix.RT_TABLE_MAIN

// convertInterface describes an interface of the pod's namespace as the
// guest NIC guestName must be configured.
func convertInterface(guestName string, a *netlink.LinkAttrs, addrs []netlink.Addr) *agentpb.Interface {
	return &agentpb.Interface{
		Name:      guestName,
		Mac:       a.HardwareAddr.String(),
		Mtu:       uint32(a.MTU),
		Addresses: convertAddrs(addrs),
	}
}

// convertAddrs converts addresses for the agent. IPv6 link-local addresses
// are left out: the guest kernel derives its own from the same MAC.
func convertAddrs(addrs []netlink.Addr) []*agentpb.IPAddress {
	var out []*agentpb.IPAddress
	for _, a := range addrs {
		if a.IPNet == nil || a.IP == nil {
			continue
		}
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue
		}
		family, ip := "v6", a.IP.To16()
		if ip4 := a.IP.To4(); ip4 != nil {
			family, ip = "v4", ip4
		}
		ones, _ := a.Mask.Size()
		out = append(out, &agentpb.IPAddress{Family: family, Address: ip.String(), PrefixLen: uint32(ones)})
	}
	return out
}

// convertRoutes converts the routes of the namespace's main table that go
// through forwarded interfaces; guestNames maps their indexes to guest
// names. Routes the guest makes by itself (the kernel's connected routes,
// router advertisements) and IPv6 link-local or multicast routes are left
// out. A route the agent cannot express is an error rather than a guest that
// routes differently from the pod's namespace.
func convertRoutes(routes []netlink.Route, guestNames map[int]string) ([]*agentpb.Route, error) {
	var out []*agentpb.Route
	for _, r := range routes {
		if r.Table != 0 && r.Table != mainTable {
			continue
		}
		if r.Protocol == unix.RTPROT_KERNEL || r.Protocol == unix.RTPROT_RA {
			continue
		}
		if r.Dst != nil && r.Dst.IP.To4() == nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast()) {
			continue
		}
		if len(r.MultiPath) > 0 {
			return nil, fmt.Errorf("route %s: multipath routes are not supported", routeDst(r))
		}
		if r.Type != 0 && r.Type != unix.RTN_UNICAST {
			return nil, fmt.Errorf("route %s: type %d (not unicast) is not supported", routeDst(r), r.Type)
		}
		dev, ok := guestNames[r.LinkIndex]
		if !ok {
			return nil, fmt.Errorf("route %s: device index %d is not a forwarded interface", routeDst(r), r.LinkIndex)
		}
		scope, err := scopeName(r.Scope)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", routeDst(r), err)
		}
		pr := &agentpb.Route{Device: dev, Scope: scope}
		if !isDefault(r.Dst) {
			pr.Destination = r.Dst.String()
		}
		if r.Gw != nil {
			pr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			pr.Source = r.Src.String()
		}
		out = append(out, pr)
	}
	return out, nil
}

// isDefault reports whether dst is the default route (netlink reports it
// as nil or as 0.0.0.0/0, ::/0).
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0 && dst.IP.IsUnspecified()
}

func routeDst(r netlink.Route) string {
	if isDefault(r.Dst) {
		return "default"
	}
	return r.Dst.String()
}

func scopeName(s netlink.Scope) (string, error) {
	switch s {
	case netlink.SCOPE_UNIVERSE:
		return "universe", nil
	case netlink.SCOPE_LINK:
		return "link", nil
	case netlink.SCOPE_HOST:
		return "host", nil
	}
	return "", fmt.Errorf("scope %d is not supported", s)
}
