package clh

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/clh/internal/chtest"
)

// serveDouble runs the API double in this process on a socket of its own.
func serveDouble(t *testing.T) (*chtest.Server, *apiClient) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s := chtest.NewServer()
	go s.Serve(ln)
	t.Cleanup(func() { ln.Close() })
	return s, &apiClient{socket: sock}
}

// raw is a body sent as it is, to say what the driver's types cannot.
type raw string

func (r raw) MarshalJSON() ([]byte, error) { return []byte(r), nil }

func wantAPIError(t *testing.T, err error, status int, text string) {
	t.Helper()
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != status || !strings.Contains(err.Error(), text) {
		t.Errorf("got %v; want HTTP %d with %q", err, status, text)
	}
}

// TestDriverBodiesMatchDocument sends the driver's own vm.create and
// vm.add-net bodies, with every device, to the double, which holds them to
// the OpenAPI shapes.
func TestDriverBodiesMatchDocument(t *testing.T) {
	s, api := serveDouble(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mac, _ := net.ParseMAC("02:00:00:00:00:07")
	cfg := hypervisor.Config{
		ID: "x", Kernel: "/k", Initrd: "/i", StateDir: "/s", KernelParams: []string{"a=b"},
		Vsock:    &hypervisor.Vsock{GuestCID: 3, HybridSocket: "/s/vsock.sock"},
		SharedFS: &hypervisor.SharedFS{Socket: "/s/fs.sock", Tag: "vmpod"},
	}.WithDefaults()
	if err := api.do(ctx, "PUT", "vm.create", buildVMConfig(cfg, "/s/console.fifo"), nil); err != nil {
		t.Fatal(err)
	}
	if err := api.do(ctx, "PUT", "vm.add-net", netConfigFor(0, hypervisor.NetDevice{TapName: "tap0", MAC: mac, MTU: 1500}), nil); err != nil {
		t.Fatal(err)
	}
	var info struct {
		Config map[string]any `json:"config"`
		State  string         `json:"state"`
	}
	if err := api.do(ctx, "GET", "vm.info", nil, &info); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(info.Config)
	for _, want := range []string{`"shared":true`, `"cmdline":"console=ttyS0 panic=1 reboot=k quiet a=b"`, `"mode":"File"`,
		`"file":"/s/console.fifo"`, `"socket":"/s/vsock.sock"`, `"tag":"vmpod"`, `"tap":"tap0"`, `"mac":"02:00:00:00:00:07"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("VM configuration lacks %s: %s", want, b)
		}
	}
	if info.State != StateCreated || s.State() != StateCreated {
		t.Errorf("state %q", info.State)
	}
	if got, want := strings.Join(s.Requests(), ", "), "PUT vm.create, PUT vm.add-net, GET vm.info"; got != want {
		t.Errorf("the double saw %s, want %s", got, want)
	}
}

// TestDoubleHoldsToDocument checks that the double refuses what CH's
// document does not allow, with CH's status codes and error bodies, and
// calls out of the lifecycle's order.
func TestDoubleHoldsToDocument(t *testing.T) {
	_, api := serveDouble(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	put := func(endpoint string, body any) error { return api.do(ctx, "PUT", endpoint, body, nil) }

	wantAPIError(t, put("vm.boot", nil), 404, "VM is not created")
	wantAPIError(t, api.do(ctx, "GET", "vm.info", nil, nil), 404, "VM is not created")
	wantAPIError(t, put("vm.add-net", raw(`{}`)), 404, "VM is not created")
	wantAPIError(t, put("vm.nonsense", nil), 404, "Not Found")
	wantAPIError(t, api.do(ctx, "GET", "vm.boot", nil, nil), 400, "Bad Request")
	for body, why := range map[raw]string{
		`{}`:                                     "missing field `payload`",
		`{"payload":{},"extra":1}`:               "unknown field `extra`",
		`{"payload":{"kernel":7}}`:               "expected a string",
		`{"payload":{},"cpus":{"boot_vcpus":1}}`: "missing field `max_vcpus`",
		`{"payload":{},"cpus":{"boot_vcpus":0,"max_vcpus":1}}`: "expected an integer in 1..=",
		`{"payload":{},"memory":{"size":1.5}}`:                 "expected an integer",
		`{"payload":{},"serial":{"mode":"Fancy"}}`:             "unknown variant `Fancy`",
		`{"payload":{},"vsock":{"cid":2,"socket":"/s"}}`:       "expected an integer in 3..=",
		`{"payload":{},"fs":[{"tag":"t","socket":"/s"}]}`:      "missing field `num_queues`",
		`{"payload":{},"net":[{"pci_device_id":256}]}`:         "expected an integer in 0..=255",
		`{"payload":{},"iommu":"yes"}`:                         "expected a boolean",
	} {
		wantAPIError(t, put("vm.create", body), 400, why)
	}
	wantAPIError(t, put("vm.create", nil), 400, "Bad Request")

	if err := put("vm.create", raw(`{"payload":{"kernel":"/k"}}`)); err != nil {
		t.Fatal(err)
	}
	wantAPIError(t, put("vm.create", raw(`{"payload":{"kernel":"/k"}}`)), 500, "VM is already created")
	wantAPIError(t, put("vm.pause", nil), 500, "Invalid VM state transition: Created to Paused")
	wantAPIError(t, put("vm.resume", nil), 500, "Invalid VM state transition: Created to Running")
	wantAPIError(t, put("vm.shutdown", nil), 500, "Invalid VM state transition: Created to Shutdown")
	wantAPIError(t, put("vm.boot", raw(`{}`)), 400, "Bad Request")
	for _, step := range []struct{ endpoint, state string }{
		{"vm.boot", StateRunning}, {"vm.pause", StatePaused}, {"vm.resume", StateRunning},
		{"vm.pause", StatePaused}, {"vm.shutdown", StateShutdown}, {"vm.boot", StateRunning},
	} {
		if err := put(step.endpoint, nil); err != nil {
			t.Fatalf("%s: %v", step.endpoint, err)
		}
		var info Info
		if err := api.do(ctx, "GET", "vm.info", nil, &info); err != nil || info.State != step.state {
			t.Fatalf("after %s: state %q, %v; want %q", step.endpoint, info.State, err, step.state)
		}
	}
	wantAPIError(t, put("vm.boot", nil), 500, "Invalid VM state transition: Running to Running")
	wantAPIError(t, put("vm.resume", nil), 500, "Invalid VM state transition: Running to Running")
	if err := put("vmm.shutdown", nil); err != nil {
		t.Fatal(err)
	}
}

// TestClientBoundsGarbage: an answer that is not HTTP, or never ends, is
// an error, read no further than maxResponse.
func TestClientBoundsGarbage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "g.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				junk := make([]byte, 64<<10)
				for i := range junk {
					junk[i] = 'A'
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				for {
					if _, err := c.Write(junk); err != nil {
						return
					}
				}
			}()
		}
	}()
	api := &apiClient{socket: sock}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	begin := time.Now()
	err = api.do(ctx, "GET", "vmm.ping", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "unreadable answer") {
		t.Errorf("endless garbage: %v", err)
	}
	if time.Since(begin) > 3*time.Second {
		t.Errorf("took %s: the read is not bounded by size", time.Since(begin))
	}
}
