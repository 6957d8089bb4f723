// Package stdiostream carries a process's stdin, stdout and stderr between
// the shim and the agent, one vsock stream per stdio stream, with no RPC
// and no encoding on the data.
//
// The shim dials: the guest never opens a connection to the host, whose
// vsock backend has no listener for it. For each stream of a process the
// shim connects to the agent's VsockPort and sends a Header (magic "vst1",
// the stream kind, the container id and the exec id, each prefixed with
// its length in one byte). The agent answers one status byte and, on
// StatusOK, bytes flow: from the process's pipe (or terminal) for stdout
// and stderr, to its stdin for stdin. Any other status is followed by the
// agent's close.
//
// The end of an output stream is the agent's close once the process's
// pipe reached EOF; the end of stdin is the shim's half-close (shutdown of
// its write side), after which the agent closes. Flow control is the
// transport's: a reader that stops stalls only its own stream.
package stdiostream

import (
	"errors"
	"fmt"
	"io"
)

// VsockPort is the guest vsock port the agent serves stdio streams on,
// next to the agent API (1024) and port-forwards (1025).
const VsockPort = 1026

// Kind names one stdio stream of a process.
type Kind byte

// The stream kinds.
const (
	Stdin  Kind = 0
	Stdout Kind = 1
	Stderr Kind = 2
)

func (k Kind) String() string {
	switch k {
	case Stdin:
		return "stdin"
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return fmt.Sprintf("stream kind %d", byte(k))
}

// Statuses the agent answers with.
const (
	StatusOK        = 0 // attached; bytes follow
	StatusNoProcess = 1 // no such container or exec
	StatusNoStream  = 2 // the process has no such stream (no stdin; stderr of a terminal)
	StatusAttached  = 3 // the stream is already attached
	StatusBadHeader = 4 // the header was malformed
	StatusGone      = 5 // the stream was given up (not attached in time) or its process removed
	StatusTooMany   = 6 // the agent holds too many stream connections; sent before the header is read
)

// MaxIDLen bounds a container or exec id, as the agent's id pattern does.
const MaxIDLen = 128

// MaxHeaderSize is the size of the largest encoded Header.
const MaxHeaderSize = fixedSize + 2*MaxIDLen

// fixedSize is the header without its ids: magic, kind, two lengths.
const fixedSize = 4 + 1 + 1 + 1

var magic = [4]byte{'v', 's', 't', '1'}

// Header names the process and the stream a connection carries.
type Header struct {
	Kind        Kind
	ContainerID string
	ExecID      string // "" for the init process
}

// Encode returns the header's wire form; it fails on a header Parse would
// refuse.
func (h Header) Encode() ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, fixedSize+len(h.ContainerID)+len(h.ExecID))
	b = append(b, magic[:]...)
	b = append(b, byte(h.Kind), byte(len(h.ContainerID)))
	b = append(b, h.ContainerID...)
	b = append(b, byte(len(h.ExecID)))
	b = append(b, h.ExecID...)
	return b, nil
}

func (h Header) validate() error {
	if h.Kind > Stderr {
		return fmt.Errorf("stdio header: unknown %s", h.Kind)
	}
	if h.ContainerID == "" {
		return errors.New("stdio header: empty container id")
	}
	if err := checkID("container id", h.ContainerID); err != nil {
		return err
	}
	if h.ExecID != "" {
		return checkID("exec id", h.ExecID)
	}
	return nil
}

// checkID accepts what the agent's id pattern does:
// [a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}.
func checkID(what, id string) error {
	if len(id) > MaxIDLen {
		return fmt.Errorf("stdio header: %s of %d bytes, more than %d", what, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return fmt.Errorf("stdio header: %s %q: byte %d (%q) not allowed", what, id, i, c)
		}
	}
	return nil
}

// Parse decodes a whole header; anything but a well-formed one, with
// nothing after it, is an error naming what was wrong.
func Parse(b []byte) (Header, error) {
	if len(b) < fixedSize {
		return Header{}, fmt.Errorf("stdio header: %d bytes, want at least %d", len(b), fixedSize)
	}
	if [4]byte(b[:4]) != magic {
		return Header{}, fmt.Errorf("stdio header: bad magic %q", b[:4])
	}
	h := Header{Kind: Kind(b[4])}
	cl := int(b[5])
	if len(b) < fixedSize+cl {
		return Header{}, fmt.Errorf("stdio header: container id of %d bytes, but only %d follow", cl, len(b)-fixedSize)
	}
	h.ContainerID = string(b[6 : 6+cl])
	el := int(b[6+cl])
	if rest := len(b) - fixedSize - cl; rest != el {
		return Header{}, fmt.Errorf("stdio header: exec id of %d bytes, but %d follow", el, rest)
	}
	h.ExecID = string(b[7+cl:])
	if err := h.validate(); err != nil {
		return Header{}, err
	}
	return h, nil
}

// ReadHeader reads one header from r, reading no byte past it.
func ReadHeader(r io.Reader) (Header, error) {
	b := make([]byte, fixedSize, MaxHeaderSize)
	if _, err := io.ReadFull(r, b[:6]); err != nil {
		return Header{}, fmt.Errorf("stdio header: %w", err)
	}
	cl := int(b[5])
	if cl > MaxIDLen {
		return Header{}, fmt.Errorf("stdio header: container id of %d bytes, more than %d", cl, MaxIDLen)
	}
	b = b[:fixedSize+cl]
	if _, err := io.ReadFull(r, b[6:]); err != nil {
		return Header{}, fmt.Errorf("stdio header: %w", err)
	}
	el := int(b[6+cl])
	if el > MaxIDLen {
		return Header{}, fmt.Errorf("stdio header: exec id of %d bytes, more than %d", el, MaxIDLen)
	}
	b = b[:fixedSize+cl+el]
	if _, err := io.ReadFull(r, b[7+cl:]); err != nil {
		return Header{}, fmt.Errorf("stdio header: %w", err)
	}
	return Parse(b)
}

// Errors for the agent's statuses other than StatusOK.
var (
	ErrNoProcess = errors.New("no such process in the guest")
	ErrNoStream  = errors.New("the process has no such stream")
	ErrAttached  = errors.New("the stream is already attached")
	ErrBadHeader = errors.New("the guest refused the header")
	ErrGone      = errors.New("the stream was given up or its process removed")
	ErrTooMany   = errors.New("the guest holds too many stdio streams")
)

// ParseStatus turns the agent's status byte into an error (nil for
// StatusOK). The guest is not trusted: an unknown value is a failure.
func ParseStatus(b byte) error {
	switch b {
	case StatusOK:
		return nil
	case StatusNoProcess:
		return ErrNoProcess
	case StatusNoStream:
		return ErrNoStream
	case StatusAttached:
		return ErrAttached
	case StatusBadHeader:
		return ErrBadHeader
	case StatusGone:
		return ErrGone
	case StatusTooMany:
		return ErrTooMany
	}
	return fmt.Errorf("stdio stream: unknown status %d from the guest", b)
}
