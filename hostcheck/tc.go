package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// checkTC checks what pod networking joins a pod's veth and tap with: an
// ingress qdisc, the u32 classifier and the mirred action. Reading kernel
// configs or /sys/module proves little (built-ins leave no trace there), so
// it sets the real thing up on the loopback of a throwaway network
// namespace.
func checkTC(netModel string) Result {
	const name = "tc"
	if netModel == "none" {
		return Result{Name: name, Status: Pass, Reason: `not needed (runtime.network_model = "none")`}
	}
	err := probeTC()
	switch {
	case err == nil:
		return Result{Name: name, Status: Pass, Reason: "ingress qdisc, u32 classifier and mirred action work (probed in a scratch network namespace)"}
	case errors.Is(err, unix.EPERM):
		return Result{Name: name, Status: Warn, Reason: "not probed: " + err.Error(),
			Fix: "run vmpod check as root (it needs CAP_SYS_ADMIN and CAP_NET_ADMIN for a scratch network namespace)"}
	}
	return Result{Name: name, Status: Warn, Reason: err.Error() + ": pods with a network namespace will fail",
		Fix: "modprobe sch_ingress cls_u32 act_mirred, or use a kernel with CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_U32 and CONFIG_NET_ACT_MIRRED"}
}

// probeTC runs the probe on a goroutine of its own: its OS thread enters a
// new network namespace, and if it cannot get back that thread must die
// with the goroutine rather than return to Go's pool.
func probeTC() error {
	errc := make(chan error, 1)
	go func() { errc <- probeTCOnLockedThread() }()
	return <-errc
}

func probeTCOnLockedThread() error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("tc probe: %w", err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("tc probe: new network namespace: %w", err)
	}
	// The handle's netlink socket stays bound to the new namespace, and
	// keeps it alive until Close; the thread can go straight back.
	h, herr := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		if herr == nil {
			h.Close()
		}
		return fmt.Errorf("tc probe: back to the original network namespace: %w", err) // thread stays locked and exits
	}
	runtime.UnlockOSThread()
	if herr != nil {
		return fmt.Errorf("tc probe: netlink: %w", herr)
	}
	defer h.Close()
	return tcSetup(h)
}

// tcSetup adds, on lo, what pod networking adds on a veth: ingress qdisc,
// then `u32 match u8 0 0 action mirred egress redirect`.
func tcSetup(h *netlink.Handle) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("tc probe: lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("tc probe: lo up: %w", err)
	}
	idx := lo.Attrs().Index
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS,
	}}
	if err := h.QdiscAdd(ingress); err != nil {
		return fmt.Errorf("tc probe: ingress qdisc: %w", err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{netlink.NewMirredAction(idx)},
	}
	if err := h.FilterAdd(filter); err != nil {
		return fmt.Errorf("tc probe: u32 filter with mirred redirect: %w", err)
	}
	return nil
}
