package portfwd

import "testing"

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{{FamilyIPv4, 80}, {FamilyIPv6, 65535}} {
		b := r.Encode()
		got, err := ParseRequest(b[:])
		if err != nil || got != r {
			t.Errorf("%+v: parsed %+v, %v", r, got, err)
		}
	}
	bad := map[string][]byte{
		"short":    []byte("vpf1\x04\x00\x00"),
		"magic":    []byte("xpf1\x04\x00\x00\x50"),
		"family":   []byte("vpf1\x05\x00\x00\x50"),
		"reserved": []byte("vpf1\x04\x01\x00\x50"),
		"port 0":   []byte("vpf1\x04\x00\x00\x00"),
	}
	for name, b := range bad {
		if _, err := ParseRequest(b); err == nil {
			t.Errorf("%s: accepted %q", name, b)
		}
	}
}

func TestParseStatus(t *testing.T) {
	if ParseStatus(StatusOK) != nil || ParseStatus(StatusRefused) != ErrRefused || ParseStatus(StatusFailed) == nil || ParseStatus(200) == nil {
		t.Fatal("status mapping")
	}
}

// FuzzParseRequest: whatever arrives, the parser answers a valid request
// or an error, and a valid one encodes back to the same bytes.
func FuzzParseRequest(f *testing.F) {
	ok := Request{FamilyIPv4, 8080}.Encode()
	f.Add(ok[:])
	f.Add([]byte("vpf1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		if e := r.Encode(); string(e[:]) != string(b) {
			t.Fatalf("%q parsed to %+v, which encodes to %q", b, r, e)
		}
	})
}

// FuzzParseStatus: the guest's status byte never means success unless it
// is StatusOK.
func FuzzParseStatus(f *testing.F) {
	f.Add(byte(0))
	f.Add(byte(7))
	f.Fuzz(func(t *testing.T, b byte) {
		if (ParseStatus(b) == nil) != (b == StatusOK) {
			t.Fatalf("status %d", b)
		}
	})
}
