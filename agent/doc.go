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
// Output. Each process has two output streams, each buffered up to 1 MiB
// in the agent; when a buffer is full the agent stops reading the pipe and
// the process blocks on its writes. ReadStdout/ReadStderr block until at
// least one byte is there or the stream ended, and return at most len
// bytes (1..1 MiB). eof=true means the stream is closed and drained: no
// byte will ever follow, and it may come together with the last data.
// Everything a process wrote before it exited is readable after the exit.
// So a host that must report an exit only after all output was delivered
// reads each stream until eof=true and waits with WaitProcess, in any
// order; note that a stream ends only when every process holding its
// write end (also a process's background children) has closed it.
//
// Terminals. A process with process.terminal=true has one pty: all its
// output comes through ReadStdout, and ReadStderr returns eof at once.
// Its stdin (when requested) is the pty; CloseStdin then only stops
// further writes, since closing a pty does not deliver EOF to the reader
// (write the terminal's EOF character, ^D, for that). Line endings come
// as the pty writes them ("\r\n"). ResizeTty works until the process
// exited, then fails with FailedPrecondition, as for a process without a
// terminal.
//
// Stdin. WriteStdin writes at most 1 MiB per request and blocks while the
// pipe is full, until the request's context ends; it returns how much was
// written. A process created without stdin=true reads /dev/null and
// WriteStdin fails with FailedPrecondition.
//
// Removal. RemoveContainer kills every process of the container, waits for
// them, and removes the container's libcontainer state, its cgroups and
// its rootfs mounts. Afterwards every request naming the container or its
// execs fails with NotFound; unread output is dropped and blocked readers
// return eof. Read everything before removing.
//
// Execs. The agent keeps an exec's status and output until its container
// is removed, except that of the finished execs (exited, both streams read
// to eof) only the newest 128 are kept per container.
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
