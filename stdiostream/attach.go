package stdiostream

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"
)

// Attach sends h on c, a new connection to the agent's VsockPort, and
// waits for the agent's status, giving up when ctx ends. On success the
// stream's bytes flow on c; on failure the caller closes c.
func Attach(ctx context.Context, c net.Conn, h Header) error {
	b, err := h.Encode()
	if err != nil {
		return err
	}
	// The conn's own deadline stops a blocked write or read: a context
	// cannot reach into them.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("attach %s of %s: send header: %w", h.Kind, h.name(), ctxErr(ctx, err))
	}
	var st [1]byte
	if _, err := io.ReadFull(c, st[:]); err != nil {
		return fmt.Errorf("attach %s of %s: read status: %w", h.Kind, h.name(), ctxErr(ctx, err))
	}
	if !stop() {
		return fmt.Errorf("attach %s of %s: %w", h.Kind, h.name(), ctx.Err())
	}
	if err := ParseStatus(st[0]); err != nil {
		return fmt.Errorf("attach %s of %s: %w", h.Kind, h.name(), err)
	}
	return nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// name identifies the process in messages.
func (h Header) name() string {
	if h.ExecID == "" {
		return "container " + h.ContainerID
	}
	return fmt.Sprintf("exec %s of container %s", h.ExecID, h.ContainerID)
}
