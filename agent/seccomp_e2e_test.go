package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"

	agentpb "github.com/vmpod/vmpod/proto"
)

// denyMkdir is a profile that allows everything but mkdir and mkdirat,
// which fail with EPERM.
func denyMkdir() *specs.LinuxSeccomp {
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno},
			// Unknown names are skipped, as runc skips them.
			{Names: []string{"vmpod_no_such_syscall"}, Action: specs.ActErrno},
		},
	}
}

// allowList is enough for libcontainer's init (which loads the filter
// just before exec when noNewPrivileges is set) and busybox sh, grep and
// mkdir to run; mkdir and mkdirat are not in it.
var allowList = []string{
	"access", "arch_prctl", "brk", "capget", "capset", "chdir", "clock_gettime",
	"clone", "clone3", "close", "close_range", "dup2", "dup3", "execve",
	"execveat", "exit", "exit_group", "faccessat", "faccessat2", "fchdir",
	"fcntl", "fstat", "fstatfs", "futex", "getcwd", "getdents64", "getegid",
	"geteuid", "getgid", "getpgrp", "getpid", "getppid", "getrandom", "gettid",
	"getuid", "ioctl", "lseek", "madvise", "mmap", "mprotect", "munmap",
	"nanosleep", "newfstatat", "open", "openat", "openat2", "pipe2", "prctl",
	"pread64", "prlimit64", "read", "readlink", "readlinkat", "rseq",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sched_yield",
	"set_robust_list", "set_tid_address", "setgid", "setgroups", "setpgid",
	"setresgid", "setresuid", "setuid", "sigaltstack", "stat", "statx",
	"tgkill", "uname", "vfork", "wait4", "write", "writev",
}

// run runs s in a new container and returns its output and exit status.
func (e *env) run(id string, s *specs.Spec) (stdout, stderr string, status uint32) {
	e.t.Helper()
	e.create(id, s, false, true)
	defer e.remove(id)
	errc := make(chan []byte, 1)
	go func() { errc <- e.readAll(id, "", true) }()
	out := e.readAll(id, "", false)
	return string(out), string(<-errc), e.wait(id, "")
}

// TestSeccomp runs containers with seccomp profiles through the real agent
// built with libseccomp, as CRI's RuntimeDefault and Localhost profiles
// reach it.
func TestSeccomp(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t, 90*time.Second)
	mkdir := "mkdir /tmp/x && echo made"

	t.Run("no profile", func(t *testing.T) {
		e.t = t
		out, errOut, st := e.run(e.prefix+"sc-none", spec("sh", "-c", mkdir))
		if st != 0 || out != "made\n" {
			t.Errorf("without a profile: status %d, stdout %q, stderr %q; want mkdir to work", st, out, errOut)
		}
	})

	t.Run("mkdir denied", func(t *testing.T) {
		e.t = t
		s := spec("sh", "-c", "grep Seccomp: /proc/self/status; "+mkdir)
		s.Linux.Seccomp = denyMkdir()
		out, errOut, st := e.run(e.prefix+"sc-deny", s)
		if st == 0 || !strings.Contains(errOut, "Operation not permitted") || strings.Contains(out, "made") {
			t.Errorf("mkdir under a profile denying it: status %d, stdout %q, stderr %q; want Operation not permitted", st, out, errOut)
		}
		if !strings.Contains(out, "Seccomp:\t2") {
			t.Errorf("no seccomp filter in /proc/self/status: %q", out)
		}
	})

	t.Run("exec inherits the profile", func(t *testing.T) {
		e.t = t
		id := e.prefix + "sc-exec"
		s := spec("sleep", "100")
		s.Linux.Seccomp = denyMkdir()
		e.create(id, s, false, true)
		defer e.remove(id)
		p := spec("mkdir", "/tmp/y").Process
		if _, err := e.client.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: id, ExecId: "mkdir", Process: mustJSON(t, p)}); err != nil {
			t.Fatal(err)
		}
		errOut := e.readAll(id, "mkdir", true)
		if st := e.wait(id, "mkdir"); st == 0 || !strings.Contains(string(errOut), "Operation not permitted") {
			t.Errorf("mkdir in an exec: status %d, stderr %q; want Operation not permitted", st, errOut)
		}
		if _, err := e.client.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: id, Signal: 9}); err != nil {
			t.Fatal(err)
		}
		e.wait(id, "")
	})

	t.Run("allow list", func(t *testing.T) {
		e.t = t
		// defaultAction SCMP_ACT_ERRNO with an allow list, the shape of
		// CRI's RuntimeDefault: the container's init and program still
		// run, and what is not listed (mkdir) fails.
		s := spec("sh", "-c", "grep Seccomp: /proc/self/status; "+mkdir)
		s.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction: specs.ActErrno,
			Syscalls:      []specs.LinuxSyscall{{Names: allowList, Action: specs.ActAllow}},
		}
		out, errOut, st := e.run(e.prefix+"sc-allow", s)
		if !strings.Contains(out, "Seccomp:\t2") || !strings.Contains(errOut, "Operation not permitted") || st == 0 {
			t.Errorf("under an allow list without mkdir: status %d, stdout %q, stderr %q", st, out, errOut)
		}
	})

	t.Run("bad profiles", func(t *testing.T) {
		e.t = t
		testBadSeccomp(t, e, ctx)
	})
}

func testBadSeccomp(t *testing.T, e *env, ctx context.Context) {
	for _, c := range []struct {
		name, want string
		edit       func(*specs.LinuxSeccomp)
	}{
		{"unknown action", "SCMP_ACT_BOGUS", func(s *specs.LinuxSeccomp) { s.Syscalls[0].Action = "SCMP_ACT_BOGUS" }},
		{"unknown default action", "SCMP_ACT_NOPE", func(s *specs.LinuxSeccomp) { s.DefaultAction = "SCMP_ACT_NOPE" }},
		{"unknown arch", "SCMP_ARCH_VAX", func(s *specs.LinuxSeccomp) { s.Architectures = []specs.Arch{"SCMP_ARCH_VAX"} }},
		{"unknown flag", "SECCOMP_FILTER_FLAG_BOGUS", func(s *specs.LinuxSeccomp) { s.Flags = []specs.LinuxSeccompFlag{"SECCOMP_FILTER_FLAG_BOGUS"} }},
		{"notify agent", "listenerPath", func(s *specs.LinuxSeccomp) { s.ListenerPath = "/run/seccomp-agent.sock" }},
	} {
		id := e.prefix + "sc-bad"
		s := spec("true")
		s.Linux.Seccomp = denyMkdir()
		c.edit(s.Linux.Seccomp)
		_, err := e.client.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: id, Spec: mustJSON(t, s), Rootfs: &agentpb.Rootfs{Path: e.rootfs}})
		wantCode(t, c.name, err, codes.InvalidArgument)
		if err != nil && (!strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: error %q does not name container %s and %s", c.name, err, id, c.want)
		}
	}
	// The failures left nothing behind: the id is free.
	_, _, st := e.run(e.prefix+"sc-bad", spec("true"))
	if st != 0 {
		t.Errorf("true after the refused profiles: status %d", st)
	}
}
