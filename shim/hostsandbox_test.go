package shim

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmpod/vmpod/internal/mountns"

	"github.com/containerd/ttrpc"
	"github.com/vmpod/vmpod/internal/testbin"
	agentpb "github.com/vmpod/vmpod/proto"
)

// hostSandbox runs vmpod-agent on the host behind a Unix socket: the
// sandbox double for tests of the service's own logic. The guest's view of
// the shared directory is the host's.
type hostSandbox struct {
	cmd    *exec.Cmd
	client *ttrpc.Client
	agent  agentpb.AgentService
	stdio  string // the agent's stdio stream socket
	shared string
	done   chan struct{}
}

func hostSandboxFactory(t *testing.T) SandboxFactory {
	agentBin := testbin.Agent(t)
	return func(ctx context.Context, req SandboxRequest) (Sandbox, error) {
		shared := filepath.Join(req.Dir, SharedDirName)
		if err := os.Mkdir(shared, 0o711); err != nil {
			return nil, err
		}
		sock := filepath.Join(req.Dir, "agent.sock")
		stdioSock := filepath.Join(req.Dir, "stdio.sock")
		cmd := exec.Command(agentBin, "--listen", "unix://"+sock, "--stdio-listen", "unix://"+stdioSock, "--state-dir", filepath.Join(req.Dir, "agent-state"), "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		sb := &hostSandbox{cmd: cmd, shared: shared, stdio: stdioSock, done: make(chan struct{})}
		go func() {
			cmd.Wait()
			close(sb.done)
		}()
		var conn net.Conn
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if conn, err = net.Dial("unix", sock); err == nil {
				break
			}
		}
		if err != nil {
			cmd.Process.Kill()
			<-sb.done
			return nil, fmt.Errorf("dial host agent: %w", err)
		}
		sb.client = ttrpc.NewClient(conn)
		sb.agent = agentpb.NewAgentClient(sb.client)
		return sb, nil
	}
}

func (h *hostSandbox) Agent() agentpb.AgentService { return h.agent }
func (h *hostSandbox) SharedDir() string           { return h.shared }
func (h *hostSandbox) GuestSharedDir() string      { return h.shared }
func (h *hostSandbox) MountNS() *mountns.NS        { return nil }
func (h *hostSandbox) Done() <-chan struct{}       { return h.done }
func (h *hostSandbox) DialStdio(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", h.stdio)
}

func (h *hostSandbox) Stop(ctx context.Context) error {
	h.client.Close()
	h.cmd.Process.Signal(os.Interrupt)
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
	return nil
}
