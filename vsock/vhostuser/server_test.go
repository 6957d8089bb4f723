package vhostuser_test

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock/device"
	"github.com/vmpod/vmpod/vsock/internal/testdriver"
	"github.com/vmpod/vmpod/vsock/vhostuser"
)

func connect(t *testing.T) (*testdriver.Frontend, *device.Device) {
	t.Helper()
	dev, err := device.New(3, device.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	f := testdriver.Connect(t, func(ctx context.Context, c *net.UnixConn) error {
		return vhostuser.Serve(ctx, c, dev)
	})
	return f, dev
}

func waitErr(t *testing.T, f *testdriver.Frontend) error {
	t.Helper()
	select {
	case err := <-f.Done:
		f.Done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("backend did not stop within 10s")
		return nil
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestGarbageEndsOnlyThatBackend: a frontend that sends garbage gets an
// error from its own Serve; a second backend keeps working.
func TestGarbageEndsOnlyThatBackend(t *testing.T) {
	for name, msg := range map[string][]byte{
		"bad version":     {1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0},
		"unknown request": {0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0},
		"oversized":       {5, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
		"short payload":   {2, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4},
	} {
		t.Run(name, func(t *testing.T) {
			bad, _ := connect(t)
			good, _ := connect(t)
			if _, err := bad.Conn.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := waitErr(t, bad); err == nil {
				t.Fatal("garbage accepted without an error")
			}
			cfg := good.Setup(2, 16)
			if binary.LittleEndian.Uint64(cfg[12:]) != 3 {
				t.Fatalf("healthy backend config %x", cfg)
			}
		})
	}
}

func TestHangupIsNotAnError(t *testing.T) {
	f, _ := connect(t)
	f.Setup(2, 16)
	f.Conn.Close()
	if err := waitErr(t, f); err != nil {
		t.Fatalf("frontend hangup: %v", err)
	}
}

// TestDescriptorsAreClosed: descriptors sent with messages do not leak,
// whether the message is accepted, replaced or rejected.
func TestDescriptorsAreClosed(t *testing.T) {
	// A first session initialises the runtime's poller descriptors.
	t.Run("warmup", func(t *testing.T) { f, _ := connect(t); f.Setup(2, 16) })
	before := openFDs(t)
	t.Run("session", func(t *testing.T) {
		f, dev := connect(t)
		f.Setup(2, 16)
		// Replace the call eventfd and the memory table once more.
		fd := f.Mem.FD
		f.Call(vhostuser.SetVringCall, binary.LittleEndian.AppendUint64(nil, 0), false, f.Calls[0])
		reg := f.Mem.Region()
		mt := binary.LittleEndian.AppendUint64(nil, 1)
		for _, v := range []uint64{reg.GuestPhysAddr, reg.Size, reg.UserAddr, reg.MmapOffset} {
			mt = binary.LittleEndian.AppendUint64(mt, v)
		}
		f.Call(vhostuser.SetMemTable, mt, false, fd)
		// A request that must not carry descriptors, with one.
		if err := f.Send(vhostuser.SetOwner, 0, nil, fd); err != nil {
			t.Fatal(err)
		}
		if err := waitErr(t, f); err == nil {
			t.Fatal("SET_OWNER with a descriptor accepted")
		}
		dev.Close()
	})
	// The subtest's cleanups closed the frontend's own descriptors.
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open, %d before", after, before)
	}
}

func TestGetVringBaseStopsTheRing(t *testing.T) {
	f, _ := connect(t)
	f.Setup(2, 16)
	r := f.Rings[device.QueueTX]
	// Two bad chains: the device consumes and returns them.
	r.SetDesc(0, 0, 1, 0, 0)
	r.Publish(0)
	r.SetDesc(1, 0, 1, 0, 0)
	r.Publish(1)
	f.Kick(device.QueueTX)
	deadline := time.Now().Add(5 * time.Second)
	used := 0
	for used < 2 && time.Now().Before(deadline) {
		used += len(r.TakeUsed())
		time.Sleep(5 * time.Millisecond)
	}
	if used != 2 {
		t.Fatalf("%d chains used, want 2", used)
	}
	p := f.Call(vhostuser.GetVringBase, []byte{1, 0, 0, 0, 0, 0, 0, 0}, true)
	if idx, base := binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]); idx != 1 || base != 2 {
		t.Fatalf("GET_VRING_BASE: vring %d base %d, want vring 1 base 2", idx, base)
	}
	// Stopped: a new chain is left alone.
	r.SetDesc(2, 0, 1, 0, 0)
	r.Publish(2)
	f.Kick(device.QueueTX)
	time.Sleep(100 * time.Millisecond)
	if u := r.TakeUsed(); len(u) != 0 {
		t.Fatalf("stopped ring still processed: %v", u)
	}
}
