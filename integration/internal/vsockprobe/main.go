// Command vsockprobe runs inside a guest's container and tries to reach
// vsock ports outside the container: the host (CID 2) on the ports it is
// given, and any other CID named. It proves issue #7's "the guest can reach
// no host vsock port except those vmpod opens" from the guest's side.
//
//	vsockprobe [-timeout 1s] [-flood N] [-workers W] [TYPE:][CID:]PORT...
//
// TYPE is stream (the default), seqpacket or dgram; CID is 2 (the host)
// unless given. A stream or seqpacket target is tried with a non-blocking
// connect, a dgram target by sending one datagram. It prints one line per
// target,
//
//	stream cid 2 port 22: reset (ECONNRESET, 412µs)
//
// with one of the outcomes refused, reset, unreachable, unsupported,
// timeout, connected (or, for a datagram, sent) or error, then with -flood N
// one line counting the outcomes of N more attempts cycling over the
// host's (CID 2) stream targets, W at a time:
//
//	flood 300: connected=0 error=0 refused=0 reset=300 sent=0 timeout=0 unreachable=0 unsupported=0
//
// It exits 1 if any attempt connected or sent, 2 on bad arguments, else
// 0. It is built static and bind-mounted into a container by the
// integration tests.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// hostCID is VMADDR_CID_HOST, the target of a bare port.
const hostCID = 2

// maxFlood bounds -flood so that a typo cannot keep a test VM busy.
const maxFlood = 100000

// Outcomes of one connection attempt.
const (
	refused     = "refused"     // ECONNREFUSED
	reset       = "reset"       // ECONNRESET: virtio-vsock answers a REQUEST nobody accepts with RST
	unreachable = "unreachable" // no transport reaches the CID (ENODEV, ENETUNREACH, ...)
	unsupported = "unsupported" // the socket type has no transport (ESOCKTNOSUPPORT, ...)
	timedOut    = "timeout"     // no answer within the timeout
	connected   = "connected"   // a stream or seqpacket connection was accepted
	sent        = "sent"        // a datagram was accepted for delivery
	failed      = "error"       // anything else, with the errno in the detail
)

var outcomes = []string{connected, failed, refused, reset, sent, timedOut, unreachable, unsupported}

// socketTypes are the TYPE prefixes of a target.
var socketTypes = map[string]int{"stream": unix.SOCK_STREAM, "seqpacket": unix.SOCK_SEQPACKET, "dgram": unix.SOCK_DGRAM}

type target struct {
	typ       string // a key of socketTypes
	cid, port uint32
}

func (t target) String() string { return fmt.Sprintf("%s cid %d port %d", t.typ, t.cid, t.port) }

// parseTarget reads "[TYPE:][CID:]PORT".
func parseTarget(s string) (target, error) {
	typ, rest := "stream", s
	if i := strings.IndexByte(s, ':'); i >= 0 {
		if _, ok := socketTypes[s[:i]]; ok {
			typ, rest = s[:i], s[i+1:]
		}
	}
	cid, port := strconv.Itoa(hostCID), rest
	if i := strings.IndexByte(rest, ':'); i >= 0 {
		cid, port = rest[:i], rest[i+1:]
	}
	c, err := strconv.ParseUint(cid, 10, 32)
	if err != nil {
		return target{}, fmt.Errorf("target %q: bad CID %q (want a number, or a type of stream, seqpacket, dgram)", s, cid)
	}
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return target{}, fmt.Errorf("target %q: bad port %q", s, port)
	}
	return target{typ: typ, cid: uint32(c), port: uint32(p)}, nil
}

// result is the outcome of one attempt and what the kernel said.
type result struct {
	outcome string
	detail  string
}

// classify maps connect's final error to an outcome.
func classify(err error) result {
	var errno unix.Errno
	if err == nil {
		return result{connected, "0"}
	}
	if !errors.As(err, &errno) {
		return result{failed, err.Error()}
	}
	name := unix.ErrnoName(errno)
	switch errno {
	case unix.ECONNREFUSED:
		return result{refused, name}
	case unix.ECONNRESET:
		return result{reset, name}
	case unix.ETIMEDOUT:
		return result{timedOut, name}
	case unix.ENODEV, unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EADDRNOTAVAIL:
		return result{unreachable, name}
	case unix.ESOCKTNOSUPPORT, unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT, unix.EOPNOTSUPP:
		return result{unsupported, name}
	}
	return result{failed, name}
}

// probe makes one attempt on t, bounded by timeout, and closes the socket
// whatever happened.
func probe(t target, timeout time.Duration) result {
	fd, err := unix.Socket(unix.AF_VSOCK, socketTypes[t.typ]|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		r := classify(err)
		r.detail = "socket: " + r.detail
		return r
	}
	defer unix.Close(fd)
	addr := &unix.SockaddrVM{CID: t.cid, Port: t.port}
	if t.typ == "dgram" {
		// No handshake: a datagram the kernel takes is a datagram sent.
		if err := unix.Sendto(fd, []byte("vsockprobe"), 0, addr); err != nil {
			return classify(err)
		}
		return result{sent, "0"}
	}
	err = unix.Connect(fd, addr)
	if !errors.Is(err, unix.EINPROGRESS) {
		return classify(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return result{timedOut, "no answer within " + timeout.String()}
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return result{failed, "poll: " + err.Error()}
		}
		if n == 0 {
			continue // the loop's deadline check decides
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return result{failed, "SO_ERROR: " + err.Error()}
		}
		if soErr != 0 {
			return classify(unix.Errno(soErr))
		}
		// Only a socket with a peer is connected: a hang-up with no error
		// set must not count as one.
		if _, err := unix.Getpeername(fd); err != nil {
			return result{failed, fmt.Sprintf("woke (revents %#x) but not connected: %v", fds[0].Revents, err)}
		}
		return classify(nil)
	}
}

// flood makes n attempts cycling over targets, workers at a time, and
// counts the outcomes.
func flood(targets []target, n, workers int, timeout time.Duration) map[string]int {
	counts := map[string]int{}
	var mu sync.Mutex
	next := make(chan target)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range next {
				r := probe(t, timeout)
				mu.Lock()
				counts[r.outcome]++
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- targets[i%len(targets)]
	}
	close(next)
	wg.Wait()
	return counts
}

func formatCounts(n int, counts map[string]int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "flood %d:", n)
	for _, o := range outcomes {
		fmt.Fprintf(&b, " %s=%d", o, counts[o])
	}
	return b.String()
}

func main() {
	timeout := flag.Duration("timeout", time.Second, "how long one attempt may wait for an answer")
	n := flag.Int("flood", 0, "how many more attempts to make, cycling over the host's stream targets")
	workers := flag.Int("workers", 4, "how many flood attempts run at once")
	flag.Parse()
	targets, err := parseArgs(flag.Args(), *timeout, *n, *workers)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vsockprobe:", err)
		fmt.Fprintf(os.Stderr, "usage: vsockprobe [-timeout d>0] [-flood 0..%d] [-workers w>=1] [TYPE:][CID:]PORT...\n", maxFlood)
		os.Exit(2)
	}
	reached := false
	for _, t := range targets {
		start := time.Now()
		r := probe(t, *timeout)
		fmt.Printf("%s: %s (%s, %v)\n", t, r.outcome, r.detail, time.Since(start).Round(time.Microsecond))
		reached = reached || r.outcome == connected || r.outcome == sent
	}
	if *n > 0 {
		// The flood is for the host's side, whose backend answers every
		// stream attempt; other CIDs and types are tried once each above.
		counts := flood(onHost(targets), *n, *workers, *timeout)
		fmt.Println(formatCounts(*n, counts))
		reached = reached || counts[connected] > 0 || counts[sent] > 0
	}
	if reached {
		os.Exit(1)
	}
}

// parseArgs checks the flags and reads the targets.
func parseArgs(args []string, timeout time.Duration, n, workers int) ([]target, error) {
	switch {
	case len(args) == 0:
		return nil, errors.New("no target")
	case timeout <= 0:
		return nil, fmt.Errorf("-timeout %v: want more than 0", timeout)
	case n < 0 || n > maxFlood:
		return nil, fmt.Errorf("-flood %d: want 0 to %d", n, maxFlood)
	case workers < 1:
		return nil, fmt.Errorf("-workers %d: want at least 1", workers)
	}
	targets := make([]target, 0, len(args))
	for _, a := range args {
		t, err := parseTarget(a)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	if n > 0 && len(onHost(targets)) == 0 {
		return nil, errors.New("-flood needs a stream target on the host (CID 2)")
	}
	return targets, nil
}

// onHost returns the stream targets on the host's CID.
func onHost(targets []target) []target {
	var host []target
	for _, t := range targets {
		if t.cid == hostCID && t.typ == "stream" {
			host = append(host, t)
		}
	}
	return host
}
