// Package network connects a pod's network namespace to its VM.
//
// CNI leaves a pod's network namespace holding one or more interfaces
// (usually a veth called eth0) with the pod's addresses and routes. vmpod
// keeps that namespace as it is and adds, for each interface, a tap device
// that QEMU attaches to the guest as a virtio-net NIC. Traffic is moved
// between the interface and the tap with tc: an ingress qdisc on both, each
// with a u32 filter matching every frame and a mirred action redirecting it
// to the egress of the other device (Kata's "tcfilter" model). The guest NIC
// takes the interface's MAC address, addresses and routes, so the pod keeps
// the L2 and L3 identity CNI gave it; the addresses also stay on the
// interface in the namespace, where they are inert because every frame the
// interface receives is redirected before the namespace's IP stack sees it.
//
// See docs/networking.md.
package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentpb "github.com/vmpod/vmpod/proto"
)

// defaultTimeout bounds each netlink exchange when the context has no
// deadline.
const defaultTimeout = 10 * time.Second

// Forwardable interface types: both deliver frames addressed to their own MAC
// to their ingress, which is what the redirect needs. A bridge, a tap someone
// else made or a device vmpod cannot recognise is refused rather than wired
// half-right.
var forwardable = map[string]bool{"veth": true, "macvlan": true}

// Endpoint is one interface of the pod's network namespace wired to a tap.
type Endpoint struct {
	// HostName and HostIndex name the interface CNI created in the pod's
	// namespace (for example "eth0"); HostType is its link type ("veth").
	HostName  string
	HostIndex int
	HostType  string
	// TapName and TapIndex name the tap created next to it in the same
	// namespace.
	TapName  string
	TapIndex int
	// Tap is an open file on the tap (/dev/net/tun, IFF_TAP|IFF_NO_PI|
	// IFF_VNET_HDR) for QEMU's "-netdev tap,fd=N,vhost=off". The caller may
	// close it once QEMU holds its copy; the tap persists until Teardown.
	Tap *os.File
	// MAC is the address the guest NIC must use: the interface's own, so
	// that the identity CNI assigned is preserved. MTU is the interface's.
	MAC net.HardwareAddr
	MTU int
	// Interface is what the agent's UpdateInterface needs (guest name, MAC,
	// MTU, addresses).
	Interface *agentpb.Interface
}

// Endpoints is the network of one pod.
type Endpoints struct {
	// NSPath is the pod's network namespace, "" if it has none.
	NSPath string
	// List holds one endpoint per forwarded interface, in the order the
	// guest NICs must be created (guest eth0, eth1, ...).
	List []*Endpoint
	// Routes is what the agent's UpdateRoutes needs; devices are guest
	// interface names.
	Routes []*agentpb.Route
}

// Interfaces returns the agent's view of the endpoints, in NIC order.
func (e *Endpoints) Interfaces() []*agentpb.Interface {
	var out []*agentpb.Interface
	for _, ep := range e.List {
		out = append(out, ep.Interface)
	}
	return out
}

// NamespacePath returns the path of the network namespace a pod's OCI spec
// joins, or "" when it joins none (host network, or a new empty namespace
// that holds only lo).
func NamespacePath(spec *specs.Spec) string {
	if spec == nil || spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// GuestName is the name the guest kernel gives the i-th virtio-net NIC.
func GuestName(i int) string { return fmt.Sprintf("eth%d", i) }

// TapName is the name of the tap for the i-th endpoint.
func TapName(i int) string { return fmt.Sprintf("tap%d%s", i, tapSuffix) }

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h): no IPv6
// link-local address.
const in6AddrGenModeNone = 1

// tapSuffix marks taps vmpod created, for Cleanup.
const tapSuffix = "_vmpod"

// nsHandles opens the namespace at nsPath and a netlink handle inside it
// whose exchanges are bounded by ctx's deadline.
func nsHandles(ctx context.Context, nsPath string) (netns.NsHandle, *netlink.Handle, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return netns.None(), nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	if typ, err := unix.IoctlRetInt(int(ns), unix.NS_GET_NSTYPE); err != nil || typ != unix.CLONE_NEWNET {
		ns.Close()
		return netns.None(), nil, fmt.Errorf("%s is not a network namespace: %w", nsPath, errdefs.ErrInvalidArgument)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return netns.None(), nil, fmt.Errorf("netlink in network namespace %s: %w", nsPath, err)
	}
	timeout := defaultTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if timeout < time.Millisecond {
		timeout = time.Millisecond
	}
	if err := h.SetSocketTimeout(timeout); err != nil {
		h.Close()
		ns.Close()
		return netns.None(), nil, fmt.Errorf("netlink timeout in %s: %w", nsPath, err)
	}
	return ns, h, nil
}

// namespaceGone reports whether nsHandles failed because the namespace was
// removed: its path no longer exists, or is the empty file left behind
// when the namespace was unmounted. Whatever vmpod created there went with
// it.
func namespaceGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errdefs.IsInvalidArgument(err)
}

// Setup wires every interface of the network namespace at nsPath except lo
// to a new tap and returns what QEMU and the agent need. An empty nsPath,
// or a namespace holding only lo, gives no endpoints and no error. On error
// nothing Setup created remains.
func Setup(ctx context.Context, nsPath string) (_ *Endpoints, retErr error) {
	eps := &Endpoints{NSPath: nsPath}
	if nsPath == "" {
		return eps, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("network setup in %s: %w", nsPath, err)
	}
	ns, h, err := nsHandles(ctx, nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer h.Close()

	links, err := forwardLinks(h, nsPath)
	if err != nil {
		return nil, err
	}
	if len(links) == 0 {
		log.G(ctx).WithField("netns", nsPath).Debug("no interface to forward")
		return eps, nil
	}
	// Read everything the guest needs before creating anything.
	ifaces, err := describe(h, nsPath, links, eps)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		// Roll back even when ctx is what failed.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), defaultTimeout)
		defer cancel()
		err := h.SetSocketTimeout(defaultTimeout)
		if err == nil {
			err = eps.teardown(rctx, h)
		}
		if err != nil {
			log.G(ctx).WithError(err).WithField("netns", nsPath).Warn("roll back network setup")
		}
	}()
	for i, l := range links {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("network setup in %s: %w", nsPath, err)
		}
		ep := &Endpoint{
			HostName:  l.Attrs().Name,
			HostIndex: l.Attrs().Index,
			HostType:  l.Type(),
			TapName:   TapName(i),
			MAC:       l.Attrs().HardwareAddr,
			MTU:       l.Attrs().MTU,
			Interface: ifaces[i],
		}
		eps.List = append(eps.List, ep) // before attach, so rollback sees it
		if err := attach(ns, h, ep); err != nil {
			return nil, fmt.Errorf("network namespace %s: %w", nsPath, err)
		}
		log.G(ctx).WithField("netns", nsPath).WithField("interface", ep.HostName).
			WithField("tap", ep.TapName).Debug("redirecting interface to tap")
	}
	return eps, nil
}

// describe reads the addresses of links and the routes through them, as the
// guest must see them, into one agent Interface per link and eps.Routes.
func describe(h *netlink.Handle, nsPath string, links []netlink.Link, eps *Endpoints) ([]*agentpb.Interface, error) {
	guestNames := make(map[int]string, len(links))
	ifaces := make([]*agentpb.Interface, len(links))
	for i, l := range links {
		guestNames[l.Attrs().Index] = GuestName(i)
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s in %s: %w", l.Attrs().Name, nsPath, err)
		}
		ifaces[i] = convertInterface(GuestName(i), l.Attrs(), addrs)
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("routes in %s: %w", nsPath, err)
	}
	if eps.Routes, err = convertRoutes(routes, guestNames); err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	return ifaces, nil
}

// forwardLinks lists the namespace's interfaces except loopback, in index
// (creation) order, and refuses what cannot be forwarded.
func forwardLinks(h *netlink.Handle, nsPath string) ([]netlink.Link, error) {
	all, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces in %s: %w", nsPath, err)
	}
	for _, l := range all {
		if isVmpodTap(l) {
			return nil, fmt.Errorf("network namespace %s already has vmpod tap %s (set up twice, or left by a dead shim: run cleanup)", nsPath, l.Attrs().Name)
		}
	}
	var links []netlink.Link
	for _, l := range all {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 {
			continue
		}
		if !forwardable[l.Type()] {
			return nil, fmt.Errorf("interface %s in %s has type %q: vmpod forwards only veth and macvlan interfaces", a.Name, nsPath, l.Type())
		}
		if len(a.HardwareAddr) != 6 {
			return nil, fmt.Errorf("interface %s in %s has no Ethernet MAC address (%q)", a.Name, nsPath, a.HardwareAddr)
		}
		if has, err := hasIngress(h, l); err != nil {
			return nil, fmt.Errorf("interface %s in %s: %w", a.Name, nsPath, err)
		} else if has {
			return nil, fmt.Errorf("interface %s in %s already has an ingress qdisc: vmpod will not redirect traffic someone else is filtering", a.Name, nsPath)
		}
		links = append(links, l)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
	return links, nil
}

// attach creates ep's tap and the redirects between it and the interface.
// What it created is recorded in ep for teardown.
func attach(ns netns.NsHandle, h *netlink.Handle, ep *Endpoint) error {
	f, err := createTap(ns, ep.TapName)
	if err != nil {
		return err
	}
	ep.Tap = f
	tap, err := h.LinkByName(ep.TapName)
	if err != nil {
		return fmt.Errorf("tap %s: %w", ep.TapName, err)
	}
	ep.TapIndex = tap.Attrs().Index
	if err := h.LinkSetMTU(tap, ep.MTU); err != nil {
		return fmt.Errorf("tap %s: set MTU %d: %w", ep.TapName, ep.MTU, err)
	}
	// The tap is a wire, not an interface of the namespace: without an
	// IPv6 link-local address the namespace's kernel sends nothing on it
	// (DAD, router solicitations) that would reach the guest. Best effort:
	// a kernel without IPv6 refuses, and has nothing to send anyway.
	_ = h.LinkSetIP6AddrGenMode(tap, in6AddrGenModeNone)
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("tap %s: up: %w", ep.TapName, err)
	}
	// Guest to pod first, so that once frames reach the tap they can leave.
	if err := addRedirect(h, ep.TapIndex, ep.HostIndex); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", ep.TapName, ep.HostName, err)
	}
	if err := addRedirect(h, ep.HostIndex, ep.TapIndex); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", ep.HostName, ep.TapName, err)
	}
	return nil
}

// Teardown removes the redirects and taps Setup created and closes the tap
// files, leaving the interfaces as CNI configured them. It is idempotent,
// and a namespace that no longer exists has nothing left to remove.
func (e *Endpoints) Teardown(ctx context.Context) error {
	if e == nil || e.NSPath == "" || len(e.List) == 0 {
		return nil
	}
	ns, h, err := nsHandles(ctx, e.NSPath)
	if namespaceGone(err) {
		e.closeTaps()
		log.G(ctx).WithField("netns", e.NSPath).Debug("network namespace gone, nothing to tear down")
		return nil
	}
	if err != nil {
		e.closeTaps()
		return err
	}
	defer ns.Close()
	defer h.Close()
	return e.teardown(ctx, h)
}

func (e *Endpoints) closeTaps() {
	for _, ep := range e.List {
		if ep.Tap != nil {
			_ = ep.Tap.Close() // may already be closed by the caller
		}
	}
}

func (e *Endpoints) teardown(ctx context.Context, h *netlink.Handle) error {
	e.closeTaps()
	var errs []error
	for _, ep := range e.List {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("network teardown in %s: %w", e.NSPath, err)
		}
		if err := removeRedirect(h, ep.HostIndex, ep.HostName, ep.TapIndex); err != nil {
			errs = append(errs, fmt.Errorf("network namespace %s: %w", e.NSPath, err))
		}
		if err := deleteTap(h, ep.TapName, ep.TapIndex); err != nil {
			errs = append(errs, fmt.Errorf("network namespace %s: %w", e.NSPath, err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes every vmpod tap in the network namespace at nsPath and the
// redirects pointing at them, for a shim that died without Teardown. A
// missing namespace or an empty nsPath is not an error.
func Cleanup(ctx context.Context, nsPath string) error {
	if nsPath == "" {
		return nil
	}
	ns, h, err := nsHandles(ctx, nsPath)
	if namespaceGone(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces in %s: %w", nsPath, err)
	}
	exists := map[int]bool{}
	taps := map[int]netlink.Link{}
	for _, l := range links {
		exists[l.Attrs().Index] = true
		if isVmpodTap(l) {
			taps[l.Attrs().Index] = l
		}
	}
	// A redirect is vmpod's when it points at a vmpod tap, or at a device
	// that is gone (the tap was deleted before the filter).
	ours := func(ifindex int) bool { return taps[ifindex] != nil || !exists[ifindex] }
	var errs []error
	for _, l := range links {
		if taps[l.Attrs().Index] != nil {
			continue
		}
		if err := removeRedirectIf(h, l, ours); err != nil {
			errs = append(errs, fmt.Errorf("network namespace %s: %w", nsPath, err))
		}
	}
	for idx, l := range taps {
		if err := deleteTap(h, l.Attrs().Name, idx); err != nil {
			errs = append(errs, fmt.Errorf("network namespace %s: %w", nsPath, err))
		} else {
			log.G(ctx).WithField("netns", nsPath).WithField("tap", l.Attrs().Name).Info("removed leftover tap")
		}
	}
	return errors.Join(errs...)
}
