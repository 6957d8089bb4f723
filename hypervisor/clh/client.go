package clh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds on one API exchange: CH's answers are small JSON documents (vm.info
// is the largest, a few kilobytes), so anything past these is not CH.
const (
	maxResponse    = 1 << 20
	maxErrorText   = 512
	defaultTimeout = 30 * time.Second
	apiRoot        = "/api/v1/"
)

// errConnect marks a request that never reached CH: its socket is not
// there yet, or nothing listens on it.
var errConnect = errors.New("cannot connect to the API socket")

// APIError is CH's refusal of a request: the HTTP status and the messages
// of its error body (a JSON array of the error chain, outermost first).
type APIError struct {
	Endpoint string
	Status   int
	Messages []string
}

func (e *APIError) Error() string {
	msg := strings.Join(e.Messages, ": ")
	if msg == "" {
		msg = "(no error text)"
	}
	return fmt.Sprintf("%s: HTTP %d: %s", e.Endpoint, e.Status, msg)
}

// apiClient speaks HTTP/1.1 to CH's API socket, one connection per
// request. It is hand-written rather than net/http's client because
// vm.add-net passes the tap's descriptor with SCM_RIGHTS in the same
// sendmsg as the request.
type apiClient struct {
	socket string
}

// do sends method endpoint with body (nil: none, as CH's bodiless actions
// require) and files as SCM_RIGHTS, and decodes a 200 answer into out
// (nil: ignored). A status other than 200 or 204 is an *APIError.
func (c *apiClient) do(ctx context.Context, method, endpoint string, body, out any, files ...*os.File) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	err := c.exchange(ctx, method, endpoint, body, out, files)
	if err != nil && ctx.Err() != nil && !errors.As(err, new(*APIError)) {
		return fmt.Errorf("%s %s: no answer from cloud-hypervisor: %w (%w)", method, endpoint, ctx.Err(), err)
	}
	return err
}

func (c *apiClient) exchange(ctx context.Context, method, endpoint string, body, out any, files []*os.File) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("%s %s: encoding the request: %w", method, endpoint, err)
		}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %w", method, endpoint, errConnect, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s%s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n", method, apiRoot, endpoint)
	if payload != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(payload))
	}
	req.WriteString("\r\n")
	req.Write(payload)
	if err := writeRequest(conn.(*net.UnixConn), req.Bytes(), files); err != nil {
		return fmt.Errorf("%s %s: sending the request: %w", method, endpoint, err)
	}

	// Bounded: a process that answers garbage, or without end, on CH's
	// socket must not make the shim read forever or hold it all.
	br := bufio.NewReader(io.LimitReader(conn, maxResponse))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("%s %s: unreadable answer from cloud-hypervisor: %w", method, endpoint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer (HTTP %d) from cloud-hypervisor: %w", method, endpoint, resp.StatusCode, err)
	}
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil
	case http.StatusOK:
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: answer is not the JSON document CH sends: %w: %q", method, endpoint, err, clip(data))
		}
		return nil
	}
	return &APIError{Endpoint: endpoint, Status: resp.StatusCode, Messages: errorMessages(data)}
}

// writeRequest writes b, with files' descriptors in the same message.
func writeRequest(conn *net.UnixConn, b []byte, files []*os.File) error {
	if len(files) == 0 {
		_, err := conn.Write(b)
		return err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	n, oobn, err := conn.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	if err != nil {
		return err
	}
	if oobn == 0 {
		return errors.New("descriptors not sent")
	}
	if n < len(b) {
		_, err = conn.Write(b[n:])
	}
	return err
}

// errorMessages reads CH's error body: a JSON array of strings (v40 and
// later), else the text itself, clipped.
func errorMessages(body []byte) []string {
	var msgs []string
	if json.Unmarshal(body, &msgs) == nil {
		for i, m := range msgs {
			msgs[i] = clip([]byte(m))
		}
		return msgs
	}
	if t := strings.TrimSpace(string(body)); t != "" {
		return []string{clip([]byte(t))}
	}
	return nil
}

func clip(b []byte) string {
	if len(b) > maxErrorText {
		return string(b[:maxErrorText]) + "…"
	}
	return string(b)
}
