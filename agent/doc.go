// Package agent is vmpod-agent's service: it runs the containers of one
// pod inside the guest with runc's libcontainer and serves the Agent API
// (proto/agent.proto) over ttrpc on any net.Listener — vsock in the guest,
// a Unix socket in tests.
//
// # What the host can rely on
//
// Processes. A container's init process has exec id "". CreateContainer
// starts it up to the point where it waits to run its program;
// StartContainer lets it run. ExecProcess starts an exec at once. Ids are
// `^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`.
//
// Exit. WaitProcess blocks until the process exited (or the request's
// context ends) and returns the status as runc reports it: the exit code,
// or 128+signal. It can be called any number of times after the exit.
// The exit is recorded as soon as the process is reaped, which may be
// before all its output has been read.
//
// Stdio. A process's stdin, stdout and stderr travel on connections of
// their own, not in RPCs (package stdiostream; ServeStdio, vsock port
// 1026 in the guest): the host connects, names the process and the
// stream in a header, and gets one status byte, then the bytes. Each
// stream attaches once. The process's pipes hold its output until its
// stream is attached; a stream not attached within AttachTimeout (30 s)
// is discarded (stdin: closed), so that a process never blocks forever on
// a host that went away. After the attach, flow control is the
// connection's: a host that stops reading makes the process block on its
// writes, and the agent buffers nothing beyond the pipe and the socket.
//
// Exit and output. The exit is recorded as soon as the process is reaped,
// which may be before all its output has been sent. An output stream ends
// with the agent's close of its connection once the pipe reached EOF:
// everything a process wrote comes before it. So a host that must report
// an exit only after all output was delivered reads each stream to its
// EOF and waits with WaitProcess, in any order; note that a stream ends
// only when every process holding its write end (also a process's
// background children) has closed it.
//
// Terminals. A process with process.terminal=true has one pty: all its
// output comes on the stdout stream, and it has no stderr stream. Its
// stdin (when requested) is the pty; the end of the stdin stream leaves
// the pty open, since closing a pty does not deliver EOF to the reader
// (write the terminal's EOF character, ^D, for that). Line endings come
// as the pty writes them ("\r\n"). ResizeTty works until the process
// exited, then fails with FailedPrecondition, as for a process without a
// terminal.
//
// Stdin. The host's half-close of the stdin stream closes the process's
// stdin pipe, after everything sent before it was written. A process
// created without stdin=true reads /dev/null and has no stdin stream.
//
// Removal. RemoveContainer kills every process of the container, waits for
// them, and removes the container's libcontainer state, its cgroups and
// its rootfs mounts. Afterwards every request naming the container or its
// execs fails with NotFound; unsent output is dropped and the stream
// connections close. Read everything before removing.
//
// Execs. The agent keeps an exec's status and output until its container
// is removed, except that of the finished execs (exited, both output
// streams ended) only the newest 128 are kept per container.
//
// OOM. GetOOMEvent blocks until a container's cgroup records an OOM kill
// and returns its id. Events are queued (up to 128) until fetched. The
// event may arrive before or after WaitProcess reports the killed process.
//
// Errors. Bad requests fail with InvalidArgument, unknown ids with
// NotFound, reused ids with AlreadyExists, and operations the process's or
// container's state forbids (signal or resize after the exit, exec into a
// paused or exited container) with FailedPrecondition; the message names
// the id. A failed request changes nothing.
package agent
