package chtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// ModeEnv picks how the stand-in binary misbehaves:
//
//	exit-on-create  exits with status 1 when vm.create arrives
//	refuse-boot     answers vm.boot with CH's error
//	no-socket       never creates its API socket
//	garbage         answers every connection with bytes that are not HTTP
const ModeEnv = "CHTEST_MODE"

// BootLine is what the stand-in writes to the serial console on boot.
const BootLine = "chtest: guest booted"

// maxLife bounds the stand-in's life: it never outlives a broken test.
const maxLife = 2 * time.Minute

// Main is a stand-in `cloud-hypervisor`: `--version` prints a version;
// `--api-socket path=P` serves the double on P until vmm.shutdown. On
// vm.boot it writes BootLine to the serial console's file and serves the
// hybrid vsock socket (CONNECT <port> → OK <port>, then echo).
func Main(args []string) int {
	socket := ""
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--version", "-V":
			fmt.Println("cloud-hypervisor " + Version + ".0")
			return 0
		case "--api-socket":
			if i+1 < len(args) {
				socket = strings.TrimPrefix(args[i+1], "path=")
				i++
			}
		}
	}
	fmt.Fprintf(os.Stderr, "chtest: started with %s\n", strings.Join(args, " "))
	if socket == "" {
		fmt.Fprintln(os.Stderr, "chtest: no --api-socket")
		return 2
	}
	go func() {
		time.Sleep(maxLife)
		fmt.Fprintln(os.Stderr, "chtest: lived too long")
		os.Exit(3)
	}()
	mode := os.Getenv(ModeEnv)
	if mode == "no-socket" {
		select {}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "chtest: %v\n", err)
		return 1
	}
	defer ln.Close()
	if mode == "garbage" {
		serveGarbage(ln)
		return 1
	}
	s := NewServer()
	s.RefuseBoot = mode == "refuse-boot"
	if mode == "exit-on-create" {
		s.OnCreate = func() {
			fmt.Fprintln(os.Stderr, "chtest: dying during vm.create ("+ModeEnv+"=exit-on-create)")
			os.Exit(1)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.OnBoot = func(cfg map[string]any) { guest(ctx, cfg) }
	go s.Serve(ln)
	<-s.Shutdown
	for _, n := range s.Nets() {
		fmt.Fprintf(os.Stderr, "chtest: net %v fds=%d ino=%d\n", n.Config["id"], n.FDs, n.FDInode)
	}
	return 0
}

// serveGarbage answers every connection with 2 MiB that are not HTTP.
func serveGarbage(ln *net.UnixListener) {
	junk := []byte(strings.Repeat("\x00\xffnot http ", (2<<20)/10))
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(junk)
		}()
	}
}

// guest plays the guest's part after boot: a console line and a hybrid
// vsock that echoes.
func guest(ctx context.Context, cfg map[string]any) {
	if serial, ok := cfg["serial"].(map[string]any); ok && serial["mode"] == "File" {
		if f, err := os.OpenFile(fmt.Sprint(serial["file"]), os.O_WRONLY, 0); err == nil {
			fmt.Fprintln(f, BootLine)
			f.Close()
		}
	}
	vs, ok := cfg["vsock"].(map[string]any)
	if !ok {
		return
	}
	ln, err := net.Listen("unix", fmt.Sprint(vs["socket"]))
	if err != nil {
		fmt.Fprintf(os.Stderr, "chtest: vsock: %v\n", err)
		return
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go hybridEcho(c)
		}
	}()
}

func hybridEcho(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(io.LimitReader(c, 64))
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "CONNECT ") {
		return
	}
	fmt.Fprintf(c, "OK 1073741824\n")
	io.Copy(c, c)
}
