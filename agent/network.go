package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

// Bounds on network requests.
const (
	maxAddresses = 64
	maxRoutes    = 256
)

// network configures interfaces and routes through one netlink handle: the
// agent's own network namespace, or a test's.
type network struct {
	h *netlink.Handle // nil: the calling thread's namespace
}

func newNetwork(h *netlink.Handle) *network {
	if h == nil {
		h = &netlink.Handle{}
	}
	return &network{h: h}
}

// UpdateInterface sets an interface's MTU, MAC and addresses (replacing
// the ones it had) and brings it up.
func (s *Server) UpdateInterface(ctx context.Context, req *agentpb.UpdateInterfaceRequest) (*agentpb.Interface, error) {
	return s.net.updateInterface(req.GetInterface())
}

// UpdateRoutes adds or replaces routes and returns the routing table.
func (s *Server) UpdateRoutes(ctx context.Context, req *agentpb.UpdateRoutesRequest) (*agentpb.Routes, error) {
	if err := s.net.updateRoutes(req.GetRoutes().GetRoutes()); err != nil {
		return nil, err
	}
	return s.net.listRoutes()
}

// ListInterfaces lists the guest's interfaces.
func (s *Server) ListInterfaces(ctx context.Context, req *agentpb.ListInterfacesRequest) (*agentpb.Interfaces, error) {
	return s.net.listInterfaces()
}

// ListRoutes lists the guest's main routing table.
func (s *Server) ListRoutes(ctx context.Context, req *agentpb.ListRoutesRequest) (*agentpb.Routes, error) {
	return s.net.listRoutes()
}

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// parseAddresses validates the addresses of an interface.
func parseAddresses(in []*agentpb.IPAddress) ([]netip.Prefix, error) {
	if len(in) > maxAddresses {
		return nil, invalid("%d addresses, more than %d", len(in), maxAddresses)
	}
	var out []netip.Prefix
	for _, a := range in {
		ip, err := netip.ParseAddr(a.GetAddress())
		if err != nil {
			return nil, invalid("address %q", a.GetAddress())
		}
		if (a.GetFamily() == "v4" && !ip.Is4()) || (a.GetFamily() == "v6" && !ip.Is6()) || (a.GetFamily() != "v4" && a.GetFamily() != "v6") {
			return nil, invalid("address %s: family %q does not match", ip, a.GetFamily())
		}
		if int(a.GetPrefixLen()) > ip.BitLen() {
			return nil, invalid("address %s: prefix length %d", ip, a.GetPrefixLen())
		}
		out = append(out, netip.PrefixFrom(ip, int(a.GetPrefixLen())))
	}
	return out, nil
}

func (n *network) updateInterface(iface *agentpb.Interface) (*agentpb.Interface, error) {
	if iface == nil || iface.GetName() == "" || len(iface.GetName()) >= unix.IFNAMSIZ {
		return nil, invalid("interface: missing or bad name")
	}
	if mtu := iface.GetMtu(); mtu != 0 && (mtu < 68 || mtu > 65535) {
		return nil, invalid("interface %s: MTU %d", iface.GetName(), mtu)
	}
	var mac net.HardwareAddr
	if iface.GetMac() != "" {
		var err error
		if mac, err = net.ParseMAC(iface.GetMac()); err != nil {
			return nil, invalid("interface %s: MAC %q", iface.GetName(), iface.GetMac())
		}
	}
	addrs, err := parseAddresses(iface.GetAddresses())
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface.GetName(), err)
	}
	link, err := n.h.LinkByName(iface.GetName())
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("interface %s: %w", iface.GetName(), errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("interface %s: %w", iface.GetName(), err)
	}
	if iface.GetMtu() != 0 {
		if err := n.h.LinkSetMTU(link, int(iface.GetMtu())); err != nil {
			return nil, fmt.Errorf("interface %s: set MTU: %w", iface.GetName(), err)
		}
	}
	if mac != nil {
		if err := n.h.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("interface %s: set MAC: %w", iface.GetName(), err)
		}
	}
	if err := n.replaceAddresses(link, addrs); err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface.GetName(), err)
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("interface %s: up: %w", iface.GetName(), err)
	}
	if link, err = n.h.LinkByIndex(link.Attrs().Index); err != nil {
		return nil, err
	}
	return n.describe(link)
}

// replaceAddresses makes want the link's global addresses.
func (n *network) replaceAddresses(link netlink.Link, want []netip.Prefix) error {
	have, err := n.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	keep := map[string]bool{}
	for _, p := range want {
		keep[p.String()] = true
	}
	for _, a := range have {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if !keep[a.IPNet.String()] {
			if err := n.h.AddrDel(link, &a); err != nil {
				return fmt.Errorf("remove address %s: %w", a.IPNet, err)
			}
		}
	}
	for _, p := range want {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if err := n.h.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	return nil
}

func (n *network) describe(link netlink.Link) (*agentpb.Interface, error) {
	a := link.Attrs()
	out := &agentpb.Interface{Name: a.Name, Mac: a.HardwareAddr.String(), Mtu: uint32(a.MTU)}
	addrs, err := n.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		family := "v6"
		if ad.IP.To4() != nil {
			family = "v4"
		}
		ones, _ := ad.Mask.Size()
		out.Addresses = append(out.Addresses, &agentpb.IPAddress{Family: family, Address: ad.IP.String(), PrefixLen: uint32(ones)})
	}
	return out, nil
}

func (n *network) listInterfaces() (*agentpb.Interfaces, error) {
	links, err := n.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	out := &agentpb.Interfaces{}
	for _, l := range links {
		d, err := n.describe(l)
		if err != nil {
			return nil, err
		}
		out.Interfaces = append(out.Interfaces, d)
	}
	return out, nil
}

var scopes = map[string]netlink.Scope{
	"":         netlink.SCOPE_UNIVERSE,
	"universe": netlink.SCOPE_UNIVERSE,
	"link":     netlink.SCOPE_LINK,
	"host":     netlink.SCOPE_HOST,
}

// parseRoute validates r and resolves its device.
func (n *network) parseRoute(r *agentpb.Route) (*netlink.Route, error) {
	scope, ok := scopes[r.GetScope()]
	if !ok {
		return nil, invalid("route %q: scope %q", r.GetDestination(), r.GetScope())
	}
	nr := &netlink.Route{Scope: scope}
	if r.GetDestination() != "" {
		p, err := netip.ParsePrefix(r.GetDestination())
		if err != nil {
			return nil, invalid("route destination %q", r.GetDestination())
		}
		nr.Dst = &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	for _, f := range []struct {
		s   string
		dst *net.IP
	}{{r.GetGateway(), &nr.Gw}, {r.GetSource(), &nr.Src}} {
		if f.s == "" {
			continue
		}
		ip, err := netip.ParseAddr(f.s)
		if err != nil {
			return nil, invalid("route %q: address %q", r.GetDestination(), f.s)
		}
		*f.dst = ip.AsSlice()
	}
	if r.GetDevice() == "" {
		return nil, invalid("route %q: no device", r.GetDestination())
	}
	link, err := n.h.LinkByName(r.GetDevice())
	if err != nil {
		return nil, fmt.Errorf("route %q: device %s: %w", r.GetDestination(), r.GetDevice(), errdefs.ErrNotFound)
	}
	nr.LinkIndex = link.Attrs().Index
	return nr, nil
}

// updateRoutes adds or replaces routes; routes without a gateway go first
// so that the gateways of the others are reachable.
func (n *network) updateRoutes(in []*agentpb.Route) error {
	if len(in) > maxRoutes {
		return invalid("%d routes, more than %d", len(in), maxRoutes)
	}
	routes := make([]*netlink.Route, 0, len(in))
	for _, r := range in {
		nr, err := n.parseRoute(r)
		if err != nil {
			return err
		}
		routes = append(routes, nr)
	}
	sort.SliceStable(routes, func(i, j int) bool { return routes[i].Gw == nil && routes[j].Gw != nil })
	for _, r := range routes {
		if err := n.h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %v: %w", r, err)
		}
	}
	return nil
}

func (n *network) listRoutes() (*agentpb.Routes, error) {
	routes, err := n.h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	names := map[int]string{}
	if links, err := n.h.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	out := &agentpb.Routes{}
	for _, r := range routes {
		pr := &agentpb.Route{Device: names[r.LinkIndex], Scope: scopeName(r.Scope)}
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			pr.Destination = r.Dst.String()
		}
		if r.Gw != nil {
			pr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			pr.Source = r.Src.String()
		}
		out.Routes = append(out.Routes, pr)
	}
	return out, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func scopeName(s netlink.Scope) string {
	switch s {
	case netlink.SCOPE_LINK:
		return "link"
	case netlink.SCOPE_HOST:
		return "host"
	default:
		return "universe"
	}
}
