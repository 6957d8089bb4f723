package shim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/mountns"
	"github.com/vmpod/vmpod/internal/socketpair"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/pkg/stdio"
	"github.com/containerd/ttrpc"
	agentpb "github.com/vmpod/vmpod/proto"
	"google.golang.org/protobuf/proto"
)

// hostileAgent answers as a compromised guest might: exit statuses out of
// range, clocks in the future, process and device lists without end. Only the methods
// the tests call are implemented; the others are the nil interface's.
type hostileAgent struct {
	agentpb.AgentService
	wait      *agentpb.WaitProcessResponse
	processes int
	devices   int
}

func (a *hostileAgent) Check(context.Context, *agentpb.CheckRequest) (*agentpb.CheckResponse, error) {
	return &agentpb.CheckResponse{Version: "hostile"}, nil
}

func (a *hostileAgent) WaitProcess(context.Context, *agentpb.ProcessRequest) (*agentpb.WaitProcessResponse, error) {
	return a.wait, nil
}

func (a *hostileAgent) ListProcesses(context.Context, *agentpb.ContainerRequest) (*agentpb.ListProcessesResponse, error) {
	resp := &agentpb.ListProcessesResponse{}
	for i := 0; i < a.processes; i++ {
		resp.Processes = append(resp.Processes, &agentpb.ProcessInfo{Pid: uint32(i + 1)})
	}
	return resp, nil
}

func (a *hostileAgent) StatsContainer(context.Context, *agentpb.ContainerRequest) (*agentpb.StatsContainerResponse, error) {
	io := &agentpb.IOStats{}
	for i := 0; i < a.devices; i++ {
		io.ServiceBytes = append(io.ServiceBytes, &agentpb.IOEntry{Major: 8, Minor: uint64(i), Op: "Read", Value: 1})
	}
	return &agentpb.StatsContainerResponse{Io: io}, nil
}

// serveHostile serves a over ttrpc on a Unix socket, as the real agent is
// reached over vsock, and returns a client of it.
func serveHostile(t *testing.T, a *hostileAgent) agentpb.AgentService {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentpb.RegisterAgentService(srv, a)
	go srv.Serve(context.Background(), l)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return agentpb.NewAgentClient(client)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The exit status comes from the guest, its time never does: a status no
// process can have is reported as lost (255), and whatever time the guest
// sends, plausible or not, the exit time is the host's when the shim
// learnt of the exit, so that it cannot precede the host-stamped start.
func TestHostileWaitReply(t *testing.T) {
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name       string
		resp       *agentpb.WaitProcessResponse
		wantStatus uint32
	}{
		{"guest clock behind", &agentpb.WaitProcessResponse{ExitStatus: 3, ExitedAtUnixNano: past.UnixNano()}, 3},
		{"guest clock 300ms behind", &agentpb.WaitProcessResponse{ExitStatus: 0, ExitedAtUnixNano: time.Now().Add(-300 * time.Millisecond).UnixNano()}, 0},
		{"status out of range", &agentpb.WaitProcessResponse{ExitStatus: 1 << 20, ExitedAtUnixNano: past.UnixNano()}, exitStatusLost},
		{"time in the future", &agentpb.WaitProcessResponse{ExitStatus: 0, ExitedAtUnixNano: time.Now().Add(24 * time.Hour).UnixNano()}, 0},
		{"time before 1970", &agentpb.WaitProcessResponse{ExitStatus: 0, ExitedAtUnixNano: -5}, 0},
		{"no time", &agentpb.WaitProcessResponse{ExitStatus: 7}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent := serveHostile(t, &hostileAgent{wait: tc.resp})
			p := newProcess("c", "", false, stdio.Stdio{})
			before := time.Now()
			status, at := p.waitAgent(testCtx(t), agent)
			if status != tc.wantStatus {
				t.Errorf("status %d, want %d", status, tc.wantStatus)
			}
			if at.Before(before) || at.After(time.Now()) {
				t.Errorf("exit time %v, want the host time of the call (%v)", at, before)
			}
		})
	}
}

// A guest that sends data on a stdin stream, and never closes it, neither
// stalls the stdin copy nor makes the shim buffer it: the data is
// discarded, the process's stdin arrives whole, and the copy ends within
// its grace.
func TestHostileStdinStream(t *testing.T) {
	shim, guest := socketpair.Unix(t)
	junkSent := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(guest, io.LimitReader(neverEnding('x'), 64<<20))
		junkSent <- n
	}()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(guest) // until the shim's half-close
		got <- b
	}()
	p := newProcess("c", "", false, stdio.Stdio{})
	done := make(chan struct{})
	go func() {
		p.copyIn(testCtx(t), shim, strings.NewReader("hello"))
		close(done)
	}()
	select {
	case b := <-got:
		if string(b) != "hello" {
			t.Errorf("the guest received %q, want hello", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stdin never reached its end while the guest sent junk")
	}
	select {
	case <-p.stdinDone:
	case <-time.After(10 * time.Second):
		t.Fatal("stdinDone not closed after the stdin copy")
	}
	select {
	case <-done:
	case <-time.After(stdinGrace + 10*time.Second):
		t.Fatal("stdin copy still runs after its grace, with the guest never closing")
	}
	if n := <-junkSent; n < 1<<20 {
		t.Errorf("the guest could send only %d bytes of junk: the shim did not drain them", n)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// An output stream that the guest never ends does not hold the exit: the
// output the guest sent arrives, and waitOutput gives up after its grace
// of no progress.
func TestHostileOutputNeverEnds(t *testing.T) {
	shim, guest := socketpair.Unix(t)
	p := newProcess("c", "", false, stdio.Stdio{})
	p.hio = &hostIO{}
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		p.copyOut(testCtx(t), shim, &out, "stdout")
		close(copied)
	}()
	if _, err := guest.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.waitOutput(testCtx(t))
	if d := time.Since(start); d < outputGrace-time.Second || d > outputGrace+5*time.Second {
		t.Errorf("waitOutput returned after %v, want about %v", d, outputGrace)
	}
	guest.Close()
	<-copied
	if out.String() != "partial" {
		t.Errorf("output %q, want partial", out.String())
	}
}

// frame writes one ttrpc frame: a 10-byte header (length, stream id,
// type, flags; big-endian) announcing length bytes, then payload.
func frame(w io.Writer, streamID, length uint32, payload []byte) error {
	var h [10]byte
	binary.BigEndian.PutUint32(h[0:4], length)
	binary.BigEndian.PutUint32(h[4:8], streamID)
	h[8] = 2 // response
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// serveRaw answers the i-th request on one connection with replies[i],
// frames written by hand as a guest bypassing ttrpc could.
func serveRaw(t *testing.T, replies ...func(w io.Writer, streamID uint32) error) agentpb.AgentService {
	t.Helper()
	server, conn := net.Pipe()
	stop := make(chan struct{})
	go func() {
		defer server.Close()
		// Closing right after the last reply could race its delivery:
		// the connection stays open until the test ends.
		defer func() { <-stop }()
		var h [10]byte
		for _, reply := range replies {
			if _, err := io.ReadFull(server, h[:]); err != nil {
				return
			}
			if _, err := io.CopyN(io.Discard, server, int64(binary.BigEndian.Uint32(h[0:4]))); err != nil {
				return
			}
			if err := reply(server, binary.BigEndian.Uint32(h[4:8])); err != nil {
				return
			}
		}
	}()
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		close(stop)
		client.Close()
	})
	return agentpb.NewAgentClient(client)
}

// A reply beyond ttrpc's 4 MiB message limit, and a reply that is not a
// message at all, fail their own call only: the oversize payload is
// discarded as it streams in (never buffered), and the agent's next
// answer on the same connection arrives.
func TestHostileRepliesFailOnlyTheirCall(t *testing.T) {
	const oversize = 5 << 20
	checkReply, err := proto.Marshal(&agentpb.CheckResponse{Version: "still here"})
	if err != nil {
		t.Fatal(err)
	}
	valid, err := proto.Marshal(&ttrpc.Response{Payload: checkReply})
	if err != nil {
		t.Fatal(err)
	}
	agent := serveRaw(t,
		func(w io.Writer, id uint32) error { return frame(w, id, oversize, make([]byte, oversize)) },
		func(w io.Writer, id uint32) error {
			garbage := []byte("\xff\xff\xff\xff not a ttrpc response")
			return frame(w, id, uint32(len(garbage)), garbage)
		},
		func(w io.Writer, id uint32) error { return frame(w, id, uint32(len(valid)), valid) },
	)
	ctx := testCtx(t)
	req := &agentpb.ContainerRequest{ContainerId: "c"}
	if _, err := agent.ListProcesses(ctx, req); err == nil || !strings.Contains(err.Error(), "exceed maximum message size") {
		t.Errorf("5 MiB reply: %v, want the message size refused", err)
	}
	if _, err := agent.ListProcesses(ctx, req); err == nil {
		t.Error("garbage reply accepted")
	} else {
		t.Logf("garbage refused: %v", err)
	}
	resp, err := agent.Check(ctx, &agentpb.CheckRequest{})
	if err != nil || resp.GetVersion() != "still here" {
		t.Errorf("the connection did not survive the bad replies: %v, %v", resp, err)
	}
}

// clientSandbox is a sandbox that is only an agent client.
type clientSandbox struct {
	agent agentpb.AgentService
	done  chan struct{}
}

func (c *clientSandbox) Agent() agentpb.AgentService { return c.agent }
func (c *clientSandbox) SharedDir() string           { return "" }
func (c *clientSandbox) GuestSharedDir() string      { return "" }
func (c *clientSandbox) MountNS() *mountns.NS        { return nil }
func (c *clientSandbox) Done() <-chan struct{}       { return c.done }
func (c *clientSandbox) Stop(context.Context) error  { return nil }
func (c *clientSandbox) DialStdio(context.Context) (net.Conn, error) {
	return nil, errors.New("no stdio streams")
}

// Process lists and io device lists from the guest are bounded.
func TestHostileLists(t *testing.T) {
	agent := serveHostile(t, &hostileAgent{processes: maxProcesses + 1, devices: 4 * maxIODevices})
	s := &service{
		containers: map[string]*container{"c": {id: "c", init: newProcess("c", "", false, stdio.Stdio{})}},
		sandbox:    &clientSandbox{agent: agent, done: make(chan struct{})},
	}
	ctx := testCtx(t)
	if _, err := s.Pids(ctx, &taskAPI.PidsRequest{ID: "c"}); err == nil || !strings.Contains(err.Error(), "65537 processes") {
		t.Errorf("Pids with %d processes: %v, want an error naming the count", maxProcesses+1, err)
	}
	st, err := agent.StatsContainer(ctx, &agentpb.ContainerRequest{ContainerId: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(metricsFromAgent(st).Io.Usage); n > maxIODevices {
		t.Errorf("%d io devices kept, want at most %d", n, maxIODevices)
	}
}
