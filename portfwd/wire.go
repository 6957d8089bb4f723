// Package portfwd carries CRI port-forward connections from the pod's
// network namespace on the host into the VM.
//
// containerd forwards a port (crictl port-forward, kubectl port-forward)
// by dialing localhost:PORT inside the pod's network namespace on the
// host: tcp4 first, then tcp6. With a VM, nothing listens there. The shim
// captures every TCP connection to loopback in that namespace (package
// capture), and the Forwarder carries each one over a new vsock stream to
// the agent, which serves it (Serve) by dialing the same loopback port in
// the guest's pod network namespace. Bytes stream both ways, half-close
// included. A port nothing listens on in the guest resets the captured
// connection, so that containerd's copy fails and the client reports an
// error, as it does when the dial is refused with runc.
//
// The wire, per vsock stream: the host sends an 8-byte request (magic
// "vpf1", the address family, a zero byte, the port big-endian); the
// guest answers one status byte, and on StatusOK both sides copy bytes
// until each has closed its half.
package portfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// VsockPort is the guest vsock port the agent serves port-forwards on.
const VsockPort = 1025

// Families of a Request: which loopback the client dialled on the host,
// and so which the guest tries first.
const (
	FamilyIPv4 = 4
	FamilyIPv6 = 6
)

// Statuses the guest answers with.
const (
	StatusOK      = 0 // connected; bytes follow
	StatusRefused = 1 // nothing listens on the port (either loopback)
	StatusFailed  = 2 // any other failure to connect
)

// RequestSize is the size of an encoded Request.
const RequestSize = 8

var magic = [4]byte{'v', 'p', 'f', '1'}

// Request asks the guest for a connection to its loopback.
type Request struct {
	Family int // FamilyIPv4 or FamilyIPv6
	Port   uint16
}

// Encode returns the request's wire form.
func (r Request) Encode() [RequestSize]byte {
	var b [RequestSize]byte
	copy(b[:4], magic[:])
	b[4] = byte(r.Family)
	binary.BigEndian.PutUint16(b[6:], r.Port)
	return b
}

// ParseRequest decodes a request; anything but a well-formed one is an
// error naming what was wrong.
func ParseRequest(b []byte) (Request, error) {
	if len(b) != RequestSize {
		return Request{}, fmt.Errorf("port-forward request: %d bytes, want %d", len(b), RequestSize)
	}
	if [4]byte(b[:4]) != magic {
		return Request{}, fmt.Errorf("port-forward request: bad magic %q", b[:4])
	}
	r := Request{Family: int(b[4]), Port: binary.BigEndian.Uint16(b[6:])}
	if r.Family != FamilyIPv4 && r.Family != FamilyIPv6 {
		return Request{}, fmt.Errorf("port-forward request: unknown address family %d", b[4])
	}
	if b[5] != 0 {
		return Request{}, fmt.Errorf("port-forward request: reserved byte is %d, want 0", b[5])
	}
	if r.Port == 0 {
		return Request{}, errors.New("port-forward request: port 0")
	}
	return r, nil
}

// ErrRefused is the guest's answer that nothing listens on the port.
var ErrRefused = errors.New("connection refused in the guest")

// ParseStatus turns the guest's one status byte into an error (nil for
// StatusOK). The guest is not trusted: an unknown value is a failure.
func ParseStatus(b byte) error {
	switch b {
	case StatusOK:
		return nil
	case StatusRefused:
		return ErrRefused
	case StatusFailed:
		return errors.New("the guest could not connect")
	}
	return fmt.Errorf("port-forward: unknown status %d from the guest", b)
}
