package network

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ingressHandle is the handle of a device's ingress qdisc ("ffff:"), the
// parent of its ingress filters.
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// filterPriority is the priority of the redirect filter ("pref 1").
const filterPriority = 1

// addRedirect sends every frame arriving at device from to the egress of
// device to: "tc qdisc add dev FROM ingress; tc filter add dev FROM parent
// ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev TO".
// u32 stands in for matchall, which these kernels lack.
func addRedirect(h *netlink.Handle, from, to int) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: from,
		Handle:    ingressHandle,
		Parent:    netlink.HANDLE_INGRESS,
	}}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("add ingress qdisc: %w", err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    ingressHandle,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		// One key of mask 0 at offset 0: "match u8 0 0", true for any frame.
		Sel: &netlink.TcU32Sel{
			Flags: netlink.TC_U32_TERMINAL,
			Keys:  []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}},
		},
		Actions: []netlink.Action{netlink.NewMirredAction(to)},
	}
	if err := h.FilterAdd(f); err != nil {
		// The qdisc is ours and empty: take it away with the failure.
		_ = h.QdiscDel(q)
		return fmt.Errorf("add u32 mirred filter: %w", err)
	}
	return nil
}

// hasIngress reports whether l has an ingress qdisc.
func hasIngress(h *netlink.Handle, l netlink.Link) (bool, error) {
	qs, err := h.QdiscList(l)
	if err != nil {
		return false, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			return true, nil
		}
	}
	return false, nil
}

// redirectTargets returns the devices the ingress filters of l redirect to.
func redirectTargets(h *netlink.Handle, l netlink.Link) ([]int, error) {
	fs, err := h.FilterList(l, ingressHandle)
	if err != nil {
		return nil, fmt.Errorf("list ingress filters: %w", err)
	}
	var out []int
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
				out = append(out, m.Ifindex)
			}
		}
	}
	return out, nil
}

// removeRedirect removes the ingress qdisc (and with it the filter) that
// Setup put on the interface with index idx and name name, if the interface
// still exists and still redirects to tap. The interface is otherwise left
// alone.
func removeRedirect(h *netlink.Handle, idx int, name string, tap int) error {
	l, err := h.LinkByIndex(idx)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	if l.Attrs().Name != name {
		return nil // another device took the index: not ours
	}
	return removeRedirectIf(h, l, func(ifindex int) bool { return tap != 0 && ifindex == tap })
}

// removeRedirectIf deletes l's ingress qdisc if one of its filters
// redirects to a device for which ours is true. vmpod only ever adds an
// ingress qdisc where there was none, so the whole qdisc is its own.
func removeRedirectIf(h *netlink.Handle, l netlink.Link, ours func(ifindex int) bool) error {
	name := l.Attrs().Name
	has, err := hasIngress(h, l)
	if err != nil || !has {
		if err != nil {
			return fmt.Errorf("interface %s: %w", name, err)
		}
		return nil
	}
	targets, err := redirectTargets(h, l)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	for _, t := range targets {
		if !ours(t) {
			continue
		}
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index,
			Handle:    ingressHandle,
			Parent:    netlink.HANDLE_INGRESS,
		}}
		if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("interface %s: delete ingress qdisc: %w", name, err)
		}
		return nil
	}
	return nil
}
