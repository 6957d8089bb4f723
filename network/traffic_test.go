package network

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Local experimental ethertypes (IEEE 802), so that no stack reacts to the
// test frames.
const (
	etherToGuest   = 0x88b5
	etherFromGuest = 0x88b6
	vnetHdrLen     = 10 // struct virtio_net_hdr, the tap's default with IFF_VNET_HDR
	trafficTimeout = 5 * time.Second
)

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func frame(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 0, 14+len(payload))
	f = append(f, dst...)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, etherType)
	return append(f, payload...)
}

// readFrame reads frames from fd until one of etherType arrives, skipping
// skip leading bytes of each, and returns its payload.
func readFrame(t *testing.T, fd, skip int, etherType uint16) []byte {
	t.Helper()
	deadline := time.Now().Add(trafficTimeout)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no frame of type %#x within %v", etherType, trafficTimeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			t.Fatalf("poll: %v", err)
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			continue
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		f := buf[:n]
		if len(f) < skip+14 {
			continue
		}
		f = f[skip:]
		if binary.BigEndian.Uint16(f[12:14]) == etherType {
			return append([]byte(nil), f[14:]...)
		}
	}
}

// TestTraffic proves the redirect both ways without a VM: a frame sent on
// the peer (bridge) side is read from the tap, as QEMU would read it, and a
// frame written to the tap, as the guest would send it, arrives at the peer.
func TestTraffic(t *testing.T) {
	requireRoot(t)
	checkLeaks(t)
	p := newPodNet(t)
	eps := setup(t, p.path)
	ep := eps.List[0]
	peer, err := p.peerH.LinkByName(peerName)
	if err != nil {
		t.Fatal(err)
	}
	peerMAC := peer.Attrs().HardwareAddr

	// A packet socket on the peer veth, opened inside the peer namespace.
	var sock int
	if err := inNamespace(p.peerNS, func() error {
		var err error
		sock, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherFromGuest)))
		return err
	}); err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(sock) })
	if err := unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(etherFromGuest), Ifindex: peer.Attrs().Index}); err != nil {
		t.Fatalf("bind packet socket: %v", err)
	}

	tapFd := int(ep.Tap.Fd())

	// Peer to guest: addressed to eth0's MAC, the one the guest NIC takes.
	toGuest := []byte("vmpod: peer to guest")
	if _, err := unix.Write(sock, frame(ep.MAC, peerMAC, etherToGuest, toGuest)); err != nil {
		t.Fatalf("send on %s: %v", peerName, err)
	}
	if got := readFrame(t, tapFd, vnetHdrLen, etherToGuest); !bytes.HasPrefix(got, toGuest) {
		t.Errorf("tap read payload %q, want %q", got, toGuest)
	}

	// Guest to peer: a zero virtio-net header (no offload) and the frame.
	fromGuest := []byte("vmpod: guest to peer")
	out := append(make([]byte, vnetHdrLen), frame(peerMAC, ep.MAC, etherFromGuest, fromGuest)...)
	if _, err := unix.Write(tapFd, out); err != nil {
		t.Fatalf("write to tap: %v", err)
	}
	if got := readFrame(t, sock, 0, etherFromGuest); !bytes.HasPrefix(got, fromGuest) {
		t.Errorf("peer received payload %q, want %q", got, fromGuest)
	}
}
