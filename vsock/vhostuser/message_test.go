package vhostuser

import (
	"encoding/binary"
	"testing"
)

func hdr(req Request, flags, size uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(req))
	b = binary.LittleEndian.AppendUint32(b, flags)
	return binary.LittleEndian.AppendUint32(b, size)
}

func TestParseHeader(t *testing.T) {
	if _, err := ParseHeader(hdr(GetFeatures, 1, 0)); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"short":         hdr(GetFeatures, 1, 0)[:11],
		"version 0":     hdr(GetFeatures, 0, 0),
		"version 2":     hdr(GetFeatures, 2, 0),
		"reply flag":    hdr(GetFeatures, 1|flagReply, 0),
		"huge payload":  hdr(SetMemTable, 1, maxPayload+1),
		"giant payload": hdr(SetMemTable, 1, 0xffffffff),
	} {
		if _, err := ParseHeader(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDecodeChecksSizesAndFDs(t *testing.T) {
	le := binary.LittleEndian
	memTable := func(n uint32, regions int) []byte {
		p := le.AppendUint32(nil, n)
		p = le.AppendUint32(p, 0)
		for range regions {
			p = le.AppendUint64(p, 0)
			p = le.AppendUint64(p, 0x1000)
			p = le.AppendUint64(p, 0x7000)
			p = le.AppendUint64(p, 0)
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		req     Request
		payload []byte
		fds     int
		ok      bool
	}{
		{"features", SetFeatures, make([]byte, 8), 0, true},
		{"features short", SetFeatures, make([]byte, 4), 0, false},
		{"features with fd", SetFeatures, make([]byte, 8), 1, false},
		{"vring num", SetVringNum, make([]byte, 8), 0, true},
		{"vring addr short", SetVringAddr, make([]byte, 32), 0, false},
		{"kick with fd", SetVringKick, le.AppendUint64(nil, 1), 1, true},
		{"kick missing fd", SetVringKick, le.AppendUint64(nil, 1), 0, false},
		{"kick no-fd flag", SetVringKick, le.AppendUint64(nil, 1|vringNoFD), 0, true},
		{"kick no-fd flag with fd", SetVringKick, le.AppendUint64(nil, 1|vringNoFD), 1, false},
		{"kick unknown bits", SetVringKick, le.AppendUint64(nil, 1<<20), 1, false},
		{"mem table", SetMemTable, memTable(1, 1), 1, true},
		{"mem table fd mismatch", SetMemTable, memTable(2, 2), 1, false},
		{"mem table no regions", SetMemTable, memTable(0, 0), 0, false},
		{"mem table too many", SetMemTable, memTable(9, 9), 8, false},
		{"mem table count lies", SetMemTable, memTable(3, 1), 3, false},
		{"config", GetConfig, append(le.AppendUint32(le.AppendUint32(nil, 0), 8), make([]byte, 12)...), 0, true},
		{"config size lies", GetConfig, append(le.AppendUint32(le.AppendUint32(nil, 0), 8), make([]byte, 4)...), 0, false},
		{"config too big", GetConfig, append(le.AppendUint32(le.AppendUint32(nil, 0), 1000), make([]byte, 1004)...), 0, false},
		{"config offset wraps", GetConfig, append(le.AppendUint32(le.AppendUint32(nil, 0xfffffff0), 0x20), make([]byte, 0x24)...), 0, false},
		{"unknown request", Request(200), nil, 0, false},
		{"log fd", SetLogFD, nil, 1, false},
	} {
		h := Header{Request: tc.req, Flags: 1, Size: uint32(len(tc.payload))}
		_, err := Decode(h, tc.payload, tc.fds)
		if tc.ok != (err == nil) {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, err := Decode(Header{Request: SetFeatures, Flags: 1, Size: 16}, make([]byte, 8), 0); err == nil {
		t.Error("payload shorter than the header's size accepted")
	}
}

// FuzzDecodeMessage feeds arbitrary bytes to the header parser and the
// payload decoder: they must never panic.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(append(hdr(SetVringAddr, 1, 40), make([]byte, 40)...), uint8(0))
	f.Add(append(hdr(SetMemTable, 1, 40), append([]byte{1, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 32)...)...), uint8(1))
	f.Add(append(hdr(GetConfig, 1, 20), append([]byte{0, 0, 0, 0, 8, 0, 0, 0}, make([]byte, 12)...)...), uint8(0))
	f.Add(append(hdr(SetVringKick, 1, 8), 0, 1, 0, 0, 0, 0, 0, 0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8) {
		if len(data) < headerSize {
			return
		}
		h, err := ParseHeader(data[:headerSize])
		if err != nil {
			return
		}
		payload := data[headerSize:]
		if len(payload) > int(h.Size) {
			payload = payload[:h.Size]
		}
		v, err := Decode(h, payload, int(nfds%10))
		if err != nil {
			return
		}
		if mt, ok := v.(MemTable); ok && len(mt.Regions) != int(nfds%10) {
			t.Fatalf("memory table of %d regions accepted with %d descriptors", len(mt.Regions), nfds%10)
		}
	})
}
