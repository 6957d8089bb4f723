package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// maxQMPLine bounds one line from QEMU: its replies are untrusted input.
const maxQMPLine = 1 << 20

// qmpClient speaks QEMU's machine protocol over a Unix socket, one command
// at a time. Asynchronous events arriving between replies are skipped.
//
// Hot-plug needs no events: a device_add reply means QEMU plugged the device,
// and whether the guest took it (ACPI_DEVICE_OST) is read in the guest itself
// through the agent, which must online it anyway. Nothing is unplugged, so
// DEVICE_DELETED is never awaited. A client library (digitalocean/go-qemu)
// would bring a generated API of hundreds of commands for the five used
// here; this client stays small and bounds what it reads.
type qmpClient struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
	QMP    json.RawMessage `json:"QMP"`
}

// dialQMP connects to path and negotiates capabilities. It retries while
// the socket does not exist yet, until ctx ends or exited is closed.
func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmpClient, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c := &qmpClient{conn: conn, r: bufio.NewReaderSize(conn, 4096)}
			if err := c.handshake(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to QMP socket %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-exited:
			return nil, errors.New("QEMU exited before its QMP socket answered")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (c *qmpClient) handshake(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setDeadline(ctx)
	greeting, err := c.readReply()
	if err != nil {
		return fmt.Errorf("QMP greeting: %w", err)
	}
	if greeting.QMP == nil {
		return errors.New("QMP greeting: not a QMP server")
	}
	_, err = c.executeLocked(ctx, "qmp_capabilities")
	return err
}

func (c *qmpClient) setDeadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	c.conn.SetDeadline(dl)
}

// readLine reads one line, failing on lines over maxQMPLine.
func (c *qmpClient) readLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := c.r.ReadSlice('\n')
		if len(line)+len(frag) > maxQMPLine {
			return nil, fmt.Errorf("QMP line longer than %d bytes", maxQMPLine)
		}
		line = append(line, frag...)
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// readReply reads the next message that is not an event.
func (c *qmpClient) readReply() (*qmpReply, error) {
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		var r qmpReply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("malformed QMP message: %w", err)
		}
		if r.Event != "" {
			continue
		}
		return &r, nil
	}
}

// Execute runs one command and returns its "return" value.
func (c *qmpClient) Execute(ctx context.Context, cmd string) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.executeLocked(ctx, cmd)
}

// ExecuteArgs runs one command with arguments (marshalled as JSON).
func (c *qmpClient) ExecuteArgs(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.executeArgsLocked(ctx, cmd, args)
}

func (c *qmpClient) executeLocked(ctx context.Context, cmd string) (json.RawMessage, error) {
	return c.executeArgsLocked(ctx, cmd, nil)
}

// qmpCommand is one request on the wire.
type qmpCommand struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

func (c *qmpClient) executeArgsLocked(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	c.setDeadline(ctx)
	req, err := json.Marshal(qmpCommand{Execute: cmd, Arguments: args})
	if err != nil {
		return nil, fmt.Errorf("QMP %s: encode arguments: %w", cmd, err)
	}
	if _, err := c.conn.Write(append(req, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	r, err := c.readReply()
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	if r.Error != nil {
		return nil, fmt.Errorf("QMP %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
	}
	return r.Return, nil
}

// Status returns query-status's "status" (running, paused, ...).
func (c *qmpClient) Status(ctx context.Context) (string, error) {
	raw, err := c.Execute(ctx, "query-status")
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("QMP query-status: %w", err)
	}
	return st.Status, nil
}

// Quit asks QEMU to exit. QEMU may close the socket before replying,
// which counts as success.
func (c *qmpClient) Quit(ctx context.Context) error {
	_, err := c.Execute(ctx, "quit")
	if err != nil && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isConnReset(err)) {
		return nil
	}
	return err
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func (c *qmpClient) Close() error { return c.conn.Close() }
