// Package vhostuser implements the backend side of the vhost-user protocol
// (QEMU docs/interop/vhost-user.rst) for one device: the wire messages, the
// request loop on the Unix socket the frontend (QEMU) connects to, the
// memory table and the vrings. The device itself plugs in through Device.
//
// The frontend is trusted more than the guest, but its socket still carries
// values that originate in the guest (ring addresses), so every message is
// checked: the header, the exact payload size for the request, the number
// of file descriptors it may carry, and each payload's own fields.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmpod/vmpod/vsock/guestmem"
)

// Request is a frontend request code.
type Request uint32

// Frontend requests (the subset QEMU sends to a vsock backend, plus the few
// we answer with an error).
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFD            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	GetConfig           Request = 24
	SetConfig           Request = 25
	GetMaxMemSlots      Request = 36
)

var requestNames = map[Request]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER",
	ResetOwner: "RESET_OWNER", SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE",
	SetLogFD: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM", SetVringAddr: "SET_VRING_ADDR",
	SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE", SetVringKick: "SET_VRING_KICK",
	SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES", SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE", GetConfig: "GET_CONFIG",
	SetConfig: "SET_CONFIG", GetMaxMemSlots: "GET_MAX_MEM_SLOTS",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request(%d)", uint32(r))
}

// Feature bits.
const (
	FeatureProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = 1 << 32 // VIRTIO_F_VERSION_1

	ProtocolMQ       = 1 << 0
	ProtocolReplyAck = 1 << 3
	ProtocolConfig   = 1 << 9
)

// Header flags.
const (
	flagVersionMask = 0x3
	flagVersion     = 0x1
	flagReply       = 0x4
	flagNeedReply   = 0x8
)

const (
	headerSize = 12
	// maxPayload bounds what we read for one message; the largest request
	// we accept (GET_CONFIG with 256 bytes of config space) is far below.
	maxPayload = 4096
	// maxFDs bounds the descriptors one message may carry.
	maxFDs = guestmem.MaxRegions
	// vringNoFD marks a SET_VRING_KICK/CALL/ERR that carries no descriptor.
	vringNoFD = 1 << 8
	// maxConfigSize bounds GET_CONFIG.
	maxConfigSize = 256
)

// Header is a message header.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32
}

// NeedReply reports whether the frontend asked for a REPLY_ACK.
func (h Header) NeedReply() bool { return h.Flags&flagNeedReply != 0 }

// ParseHeader decodes and checks a header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) != headerSize {
		return Header{}, fmt.Errorf("vhost-user header: %d bytes, want %d", len(b), headerSize)
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&flagVersionMask != flagVersion {
		return h, fmt.Errorf("vhost-user %v: protocol version %d, want %d", h.Request, h.Flags&flagVersionMask, flagVersion)
	}
	if h.Flags&flagReply != 0 {
		return h, fmt.Errorf("vhost-user %v: reply flag set on a request", h.Request)
	}
	if h.Size > maxPayload {
		return h, fmt.Errorf("vhost-user %v: payload of %d bytes exceeds %d", h.Request, h.Size, maxPayload)
	}
	return h, nil
}

func (h Header) encodeReply(size int) []byte {
	b := make([]byte, headerSize, headerSize+size)
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Request))
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(b[8:], uint32(size))
	return b
}

// None is the payload of requests without one.
type None struct{}

// U64 is a 64-bit payload: features, or the result of a REPLY_ACK.
type U64 uint64

// VringState is a vring index with a number (size, base or enable flag).
type VringState struct {
	Index uint32
	Num   uint32
}

// VringFile is the payload of SET_VRING_KICK/CALL/ERR: the vring index and
// whether a descriptor accompanies it.
type VringFile struct {
	Index uint32
	NoFD  bool
}

// VringAddr is the payload of SET_VRING_ADDR; the addresses are the
// frontend's virtual addresses.
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// MemTable is the payload of SET_MEM_TABLE.
type MemTable struct {
	Regions []guestmem.RegionDesc
}

// ConfigSpace is the payload of GET_CONFIG/SET_CONFIG.
type ConfigSpace struct {
	Offset uint32
	Size   uint32
	Flags  uint32
	Data   []byte
}

// fdRule says how many descriptors a request may carry.
func fdRule(r Request, payload []byte) (min, max int) {
	switch r {
	case SetMemTable:
		return 1, maxFDs // exact number checked against the regions
	case SetVringKick, SetVringCall, SetVringErr:
		if len(payload) == 8 && binary.LittleEndian.Uint64(payload)&vringNoFD != 0 {
			return 0, 0
		}
		return 1, 1
	}
	return 0, 0
}

// Decode checks a request's payload and descriptor count and returns the
// typed payload: None, U64, VringState, VringFile, VringAddr, MemTable or
// ConfigSpace. It never keeps a reference to payload.
func Decode(h Header, payload []byte, nfds int) (any, error) {
	if uint32(len(payload)) != h.Size {
		return nil, fmt.Errorf("vhost-user %v: payload of %d bytes, header says %d", h.Request, len(payload), h.Size)
	}
	lo, hi := fdRule(h.Request, payload)
	if nfds < lo || nfds > hi {
		return nil, fmt.Errorf("vhost-user %v: %d file descriptors, want %d..%d", h.Request, nfds, lo, hi)
	}
	v, err := decodePayload(h.Request, payload)
	if err != nil {
		return nil, fmt.Errorf("vhost-user %v: %w", h.Request, err)
	}
	if mt, ok := v.(MemTable); ok && len(mt.Regions) != nfds {
		return nil, fmt.Errorf("vhost-user %v: %d regions but %d file descriptors", h.Request, len(mt.Regions), nfds)
	}
	return v, nil
}

func exact(p []byte, n int) error {
	if len(p) != n {
		return fmt.Errorf("payload of %d bytes, want %d", len(p), n)
	}
	return nil
}

func decodePayload(r Request, p []byte) (any, error) {
	le := binary.LittleEndian
	switch r {
	case GetFeatures, GetProtocolFeatures, SetOwner, ResetOwner, GetQueueNum, GetMaxMemSlots:
		// QEMU sends these with an empty payload; tolerate the 8-byte
		// zero some frontends send.
		if len(p) != 0 && len(p) != 8 {
			return nil, fmt.Errorf("payload of %d bytes, want 0", len(p))
		}
		return None{}, nil
	case SetFeatures, SetProtocolFeatures:
		if err := exact(p, 8); err != nil {
			return nil, err
		}
		return U64(le.Uint64(p)), nil
	case SetVringNum, SetVringBase, GetVringBase, SetVringEnable:
		if err := exact(p, 8); err != nil {
			return nil, err
		}
		return VringState{Index: le.Uint32(p), Num: le.Uint32(p[4:])}, nil
	case SetVringKick, SetVringCall, SetVringErr:
		if err := exact(p, 8); err != nil {
			return nil, err
		}
		v := le.Uint64(p)
		if v&^uint64(0xff|vringNoFD) != 0 {
			return nil, fmt.Errorf("unknown bits in %#x", v)
		}
		return VringFile{Index: uint32(v & 0xff), NoFD: v&vringNoFD != 0}, nil
	case SetVringAddr:
		if err := exact(p, 40); err != nil {
			return nil, err
		}
		return VringAddr{Index: le.Uint32(p), Flags: le.Uint32(p[4:]), Desc: le.Uint64(p[8:]),
			Used: le.Uint64(p[16:]), Avail: le.Uint64(p[24:]), Log: le.Uint64(p[32:])}, nil
	case SetMemTable:
		return decodeMemTable(p)
	case GetConfig, SetConfig:
		return decodeConfig(p)
	}
	return nil, errors.New("unsupported request")
}

func decodeMemTable(p []byte) (MemTable, error) {
	le := binary.LittleEndian
	if len(p) < 8 {
		return MemTable{}, fmt.Errorf("payload of %d bytes, want at least 8", len(p))
	}
	n := le.Uint32(p)
	if n == 0 || n > guestmem.MaxRegions {
		return MemTable{}, fmt.Errorf("%d regions, want 1..%d", n, guestmem.MaxRegions)
	}
	// QEMU sends only the regions in use; some frontends send all eight.
	if len(p) != 8+32*int(n) && len(p) != 8+32*guestmem.MaxRegions {
		return MemTable{}, fmt.Errorf("payload of %d bytes for %d regions", len(p), n)
	}
	mt := MemTable{Regions: make([]guestmem.RegionDesc, n)}
	for i := range mt.Regions {
		b := p[8+32*i:]
		mt.Regions[i] = guestmem.RegionDesc{GuestPhysAddr: le.Uint64(b), Size: le.Uint64(b[8:]),
			UserAddr: le.Uint64(b[16:]), MmapOffset: le.Uint64(b[24:])}
		if mt.Regions[i].Size == 0 {
			return MemTable{}, fmt.Errorf("region %d has size 0", i)
		}
	}
	return mt, nil
}

func decodeConfig(p []byte) (ConfigSpace, error) {
	le := binary.LittleEndian
	if len(p) < 12 {
		return ConfigSpace{}, fmt.Errorf("payload of %d bytes, want at least 12", len(p))
	}
	c := ConfigSpace{Offset: le.Uint32(p), Size: le.Uint32(p[4:]), Flags: le.Uint32(p[8:])}
	if c.Size > maxConfigSize || c.Offset > maxConfigSize || c.Offset+c.Size > maxConfigSize {
		return ConfigSpace{}, fmt.Errorf("config range %d+%d exceeds %d", c.Offset, c.Size, maxConfigSize)
	}
	if len(p) != 12+int(c.Size) {
		return ConfigSpace{}, fmt.Errorf("payload of %d bytes for %d config bytes", len(p), c.Size)
	}
	c.Data = append([]byte(nil), p[12:]...)
	return c, nil
}

func encodeU64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func encodeVringState(s VringState) []byte {
	b := binary.LittleEndian.AppendUint32(nil, s.Index)
	return binary.LittleEndian.AppendUint32(b, s.Num)
}

func encodeConfig(c ConfigSpace) []byte {
	b := binary.LittleEndian.AppendUint32(nil, c.Offset)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.Data)))
	b = binary.LittleEndian.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}
