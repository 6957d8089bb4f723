package stdiostream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestHeaderRoundTrip(t *testing.T) {
	long := strings.Repeat("a", MaxIDLen)
	for _, h := range []Header{
		{Stdin, "c", ""},
		{Stdout, "c1", "exec-1"},
		{Stderr, long, long},
		{Stdout, "A.b_c-d", "0"},
	} {
		b, err := h.Encode()
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		got, err := Parse(b)
		if err != nil || got != h {
			t.Errorf("%+v: parsed %+v, %v", h, got, err)
		}
		got, err = ReadHeader(io.MultiReader(bytes.NewReader(b), strings.NewReader("data after")))
		if err != nil || got != h {
			t.Errorf("%+v: read %+v, %v", h, got, err)
		}
	}
}

func TestEncodeRefuses(t *testing.T) {
	for name, h := range map[string]Header{
		"kind":                 {Kind(3), "c", ""},
		"empty container id":   {Stdout, "", ""},
		"long container id":    {Stdout, strings.Repeat("a", MaxIDLen+1), ""},
		"long exec id":         {Stdout, "c", strings.Repeat("a", MaxIDLen+1)},
		"slash":                {Stdout, "c/d", ""},
		"leading dot":          {Stdout, ".c", ""},
		"exec id leading dash": {Stdout, "c", "-e"},
		"NUL":                  {Stdout, "c\x00", ""},
	} {
		if _, err := h.Encode(); err == nil {
			t.Errorf("%s: encoded %+v", name, h)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for name, b := range map[string]string{
		"empty":            "",
		"short":            "vst1\x01\x01",
		"magic":            "vst2\x01\x01c\x00",
		"kind":             "vst1\x03\x01c\x00",
		"no container id":  "vst1\x01\x00\x00",
		"container id cut": "vst1\x01\x05c\x00",
		"exec id cut":      "vst1\x01\x01c\x03ab",
		"trailing bytes":   "vst1\x01\x01c\x00x",
		"bad container id": "vst1\x01\x01/\x00",
		"bad exec id":      "vst1\x01\x01c\x01/",
		"long id":          "vst1\x01\x81" + strings.Repeat("a", 129) + "\x00",
	} {
		if h, err := Parse([]byte(b)); err == nil {
			t.Errorf("%s: parsed %q as %+v", name, b, h)
		}
		if name == "trailing bytes" {
			continue // ReadHeader stops at the header's end
		}
		if h, err := ReadHeader(strings.NewReader(b)); err == nil {
			t.Errorf("%s: read %q as %+v", name, b, h)
		}
	}
}

// ReadHeader never reads more than a header's bounded size, whatever the
// lengths claim.
func TestReadHeaderBounded(t *testing.T) {
	r := &countingReader{r: strings.NewReader("vst1\x01\xff" + strings.Repeat("a", 1000))}
	if _, err := ReadHeader(r); err == nil {
		t.Fatal("accepted a 255-byte container id")
	}
	if r.n > MaxHeaderSize {
		t.Fatalf("read %d bytes, more than %d", r.n, MaxHeaderSize)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestParseStatus(t *testing.T) {
	want := map[byte]error{
		StatusOK: nil, StatusNoProcess: ErrNoProcess, StatusNoStream: ErrNoStream, StatusAttached: ErrAttached,
		StatusBadHeader: ErrBadHeader, StatusGone: ErrGone, StatusTooMany: ErrTooMany,
	}
	for b, w := range want {
		if got := ParseStatus(b); got != w {
			t.Errorf("status %d: %v, want %v", b, got, w)
		}
	}
	if ParseStatus(200) == nil {
		t.Error("unknown status accepted")
	}
}

// Attach sends the header and reports the agent's status; a silent agent
// costs no more than ctx.
func TestAttach(t *testing.T) {
	h := Header{Stdout, "c", "e"}
	for _, c := range []struct {
		status byte
		want   error
	}{{StatusOK, nil}, {StatusAttached, ErrAttached}} {
		a, b := net.Pipe()
		go func() {
			got, err := ReadHeader(b)
			if err == nil && got == h {
				_, _ = b.Write([]byte{c.status})
			}
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := Attach(ctx, a, h); !errors.Is(err, c.want) {
			t.Errorf("status %d: %v, want %v", c.status, err, c.want)
		}
		cancel()
		a.Close()
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := Attach(ctx, a, h); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent agent: %v, want the deadline", err)
	}
}

// FuzzParse: whatever arrives, Parse answers a valid header or an error,
// a valid one encodes back to the same bytes, and ReadHeader agrees.
func FuzzParse(f *testing.F) {
	ok, _ := Header{Stdout, "c1", "e1"}.Encode()
	f.Add(ok)
	f.Add([]byte("vst1\x00\x01c\x00"))
	f.Add([]byte("vst1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		rh, rerr := ReadHeader(bytes.NewReader(b))
		if err != nil {
			if rerr == nil {
				// ReadHeader stops at the header's end; Parse wants
				// nothing after it.
				e, _ := rh.Encode()
				if len(e) >= len(b) {
					t.Fatalf("%q: Parse refused (%v) what ReadHeader read whole as %+v", b, err, rh)
				}
			}
			return
		}
		if rerr != nil || rh != h {
			t.Fatalf("%q: Parse %+v, ReadHeader %+v %v", b, h, rh, rerr)
		}
		e, err := h.Encode()
		if err != nil || !bytes.Equal(e, b) {
			t.Fatalf("%q parsed to %+v, which encodes to %q, %v", b, h, e, err)
		}
	})
}

// FuzzParseStatus: a status byte never means success unless it is
// StatusOK.
func FuzzParseStatus(f *testing.F) {
	f.Add(byte(0))
	f.Add(byte(9))
	f.Fuzz(func(t *testing.T, b byte) {
		if (ParseStatus(b) == nil) != (b == StatusOK) {
			t.Fatalf("status %d", b)
		}
	})
}
