// Package capture steers every TCP connection to loopback (127.0.0.0/8
// and ::1) in a network namespace to listeners of this process: an
// nftables table in that namespace redirects them (nat, output hook) to
// one listener per address family, bound to loopback in the namespace,
// and the listeners hand out connections whose LocalAddr is the address
// the client dialled (SO_ORIGINAL_DST). No port is opened outside the
// namespace, and no binary is needed: the rules go in over netlink.
//
// eBPF sk_lookup would need no NAT, but its socket map refuses listening
// sockets on some kernels (EOPNOTSUPP on the build machines' 6.18).
package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) the capture adds to the
// namespace.
const TableName = "vmpod_portfwd"

// Capture is a loopback capture in one network namespace.
type Capture struct {
	// Listeners receive the captured connections: IPv4 first, then IPv6
	// when the namespace has it. Their connections' LocalAddr is the
	// destination the client dialled.
	Listeners []net.Listener
	nsPath    string
	table     bool
}

// Loopback captures the TCP connections to loopback in the network
// namespace pinned at nsPath. It brings the namespace's lo up (containerd
// dials localhost there). On error nothing is left behind.
func Loopback(nsPath string) (_ *Capture, retErr error) {
	ns, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("capture loopback: network namespace: %w", err)
	}
	defer ns.Close()
	c := &Capture{nsPath: nsPath}
	defer func() {
		if retErr != nil {
			c.Close()
		}
	}()
	var ports []uint16
	err = inNamespace(int(ns.Fd()), func() error {
		if lo, err := netlink.LinkByName("lo"); err == nil {
			if err := netlink.LinkSetUp(lo); err != nil {
				return fmt.Errorf("bring lo up: %w", err)
			}
		}
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
		c.Listeners = append(c.Listeners, &listener{ln.(*net.TCPListener), false})
		ports = append(ports, uint16(ln.Addr().(*net.TCPAddr).Port))
		// Without IPv6 (disabled in the namespace), only IPv4 is captured.
		if ln6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
			c.Listeners = append(c.Listeners, &listener{ln6.(*net.TCPListener), true})
			ports = append(ports, uint16(ln6.Addr().(*net.TCPAddr).Port))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture loopback in %s: %w", nsPath, err)
	}
	if err := addTable(int(ns.Fd()), ports); err != nil {
		return nil, fmt.Errorf("capture loopback in %s: %w", nsPath, err)
	}
	c.table = true
	return c, nil
}

// addTable replaces the namespace's capture table with one that
// redirects TCP to 127.0.0.0/8 to ports[0] and TCP to ::1 to ports[1].
func addTable(ns int, ports []uint16) error {
	conn, err := nftables.New(nftables.WithNetNSFd(ns))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer conn.CloseLasting()
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	// A table left by a shim that died goes first.
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	ch := conn.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
	})
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
	redirect := func(port uint16) []expr.Any {
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
			&expr.Redir{RegisterProtoMin: 1},
		}
	}
	// ip daddr 127.0.0.0/8: the address's first byte.
	v4 := append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}, tcp...)
	v4 = append(v4,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127}},
	)
	conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(v4, redirect(ports[0])...)})
	if len(ports) > 1 {
		v6 := append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		}, tcp...)
		v6 = append(v6,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.IPv6loopback},
		)
		conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(v6, redirect(ports[1])...)})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: add table inet %s: %w", TableName, err)
	}
	return nil
}

// Close removes the table and closes the listeners (and so every
// connection not accepted yet). A namespace that is gone is not an error.
func (c *Capture) Close() error {
	var errs []error
	if c.table {
		c.table = false
		if err := delTable(c.nsPath); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ln := range c.Listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func delTable(nsPath string) error {
	ns, err := os.Open(nsPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove port-forward capture: %w", err)
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return fmt.Errorf("remove port-forward capture: nftables: %w", err)
	}
	defer conn.CloseLasting()
	conn.DelTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove port-forward capture: table inet %s in %s: %w", TableName, nsPath, err)
	}
	return nil
}

// listener accepts redirected connections and reports each one's
// original destination as its local address.
type listener struct {
	*net.TCPListener
	v6 bool
}

// A connection whose original destination cannot be read (it did not
// come through the redirect) is reset, and the next one accepted.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			return nil, err
		}
		dst, err := originalDst(c, l.v6)
		if err != nil {
			c.SetLinger(0)
			c.Close()
			continue
		}
		return &conn{c, dst}, nil
	}
}

// conn is a captured connection; LocalAddr is where the client meant to go.
type conn struct {
	*net.TCPConn
	dst *net.TCPAddr
}

func (c *conn) LocalAddr() net.Addr { return c.dst }

// originalDst reads the destination a connection had before the redirect.
func originalDst(c *net.TCPConn, v6 bool) (*net.TCPAddr, error) {
	sc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var addr *net.TCPAddr
	var gerr error
	err = sc.Control(func(fd uintptr) {
		if v6 {
			var sa unix.RawSockaddrInet6
			size := uint32(unsafe.Sizeof(sa))
			gerr = getsockopt(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), &size)
			if gerr == nil {
				p := (*[2]byte)(unsafe.Pointer(&sa.Port))
				addr = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: int(binary.BigEndian.Uint16(p[:]))}
			}
			return
		}
		var sa unix.RawSockaddrInet4
		size := uint32(unsafe.Sizeof(sa))
		gerr = getsockopt(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), &size)
		if gerr == nil {
			p := (*[2]byte)(unsafe.Pointer(&sa.Port))
			addr = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: int(binary.BigEndian.Uint16(p[:]))}
		}
	})
	if err != nil {
		return nil, err
	}
	if gerr != nil {
		return nil, fmt.Errorf("SO_ORIGINAL_DST: %w", gerr)
	}
	return addr, nil
}

func getsockopt(fd, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// inNamespace runs fn on a thread in the network namespace ns. A thread
// that cannot return to its namespace stays locked and is ended.
func inNamespace(ns int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const ip6tSoOriginalDst = 80
