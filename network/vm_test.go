package network

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testbin"
	agentpb "github.com/vmpod/vmpod/proto"
)

func TestMain(m *testing.M) {
	code := testbin.RunVMs(m)
	imagetest.Cleanup()
	os.Exit(code)
}

// Mirrors network/internal/guestnet.
const (
	guestInterfacesFile = "/etc/vmpod/test-interfaces.json"
	guestRoutesFile     = "/etc/vmpod/test-routes.json"
	guestEchoPort       = 7777
	guestMarker         = "vmpod-guest "
	// remoteIP is an address of the peer outside the pod's subnet: the
	// guest reaches it only through the default route it was given.
	remoteIP = "10.200.0.1"
)

// guestInitrd builds an initrd whose /init configures the NICs with the
// real agent code from eps' values and then echoes UDP.
func guestInitrd(t *testing.T, dir string, eps *Endpoints) string {
	t.Helper()
	bin := testbin.Build(t, "./network/internal/guestnet", true)
	files := map[string]string{}
	for guest, m := range map[string]proto.Message{
		guestInterfacesFile: &agentpb.Interfaces{Interfaces: eps.Interfaces()},
		guestRoutesFile:     &agentpb.Routes{Routes: eps.Routes},
	} {
		raw, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		host := filepath.Join(dir, filepath.Base(guest))
		if err := os.WriteFile(host, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		files[guest] = host
	}
	out := filepath.Join(dir, "initrd.img")
	opts, err := imagetest.Options(bin, out)
	if err != nil {
		t.Fatal(err)
	}
	opts.ExtraFiles = files
	if _, err := image.BuildInitrd(opts); err != nil {
		t.Fatalf("build initrd: %v", err)
	}
	return out
}

// TestGuestTraffic boots a guest on the tap: its NIC takes the endpoint's
// MAC, the real agent code applies the Interface and Routes Setup produced,
// and a datagram from outside the pod's subnet reaches the guest and its
// answer comes back through the default route, both ways across the
// redirect.
func TestGuestTraffic(t *testing.T) {
	requireRoot(t)
	imagetest.Require(t)
	dir := t.TempDir()
	leakcheck.Check(t, leakcheck.Options{Roots: []string{dir}, LinkPrefixes: []string{"vmpt"}, NetnsPrefixes: []string{"vmpt"}})
	p := newPodNet(t)
	peer, err := p.peerH.LinkByName(peerName)
	if err != nil {
		t.Fatal(err)
	}
	mustAddr(t, p.peerH, peer, remoteIP+"/32")
	eps := setup(t, p.path)
	ep := eps.List[0]
	initrd := guestInitrd(t, dir, eps)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, imagetest.QEMUPath,
		"-machine", "q35", "-accel", "tcg", "-m", "256M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-kernel", imagetest.Kernel(t), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 reboot=k quiet",
		"-netdev", "tap,id=net0,fd=3,vhost=off",
		"-device", "virtio-net-pci,netdev=net0,mac="+ep.MAC.String(),
	)
	cmd.Dir = dir
	cmd.ExtraFiles = []*os.File{ep.Tap}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitReady(t, stdout)

	// The echo request leaves the peer from remoteIP.
	var conn *net.UDPConn
	if err := inNamespace(p.peerNS, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(remoteIP)})
		return err
	}); err != nil {
		t.Fatalf("udp socket in the peer namespace: %v", err)
	}
	defer conn.Close()
	guest := &net.UDPAddr{IP: net.ParseIP(strings.Split(podIP, "/")[0]), Port: guestEchoPort}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no answer from the guest within 30s")
		}
		if _, err := conn.WriteToUDP([]byte("ping"), guest); err != nil {
			t.Fatalf("send to %v: %v", guest, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			continue // ARP and the guest's first packets take a moment under TCG
		}
		if got := string(buf[:n]); got != guestMarker+"ping" {
			t.Fatalf("answer %q, want %q", got, guestMarker+"ping")
		}
		return
	}
}

// waitReady reads the guest console until guestnet reports ready, and fails
// on its error line, on QEMU's exit or after a bound.
func waitReady(t *testing.T, stdout interface{ Read([]byte) (int, error) }) {
	t.Helper()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var console []string
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("qemu exited before the guest was ready:\n%s", strings.Join(console, "\n"))
			}
			console = append(console, l)
			if strings.Contains(l, "guestnet: error") {
				t.Fatalf("guest: %s\n%s", l, strings.Join(console, "\n"))
			}
			if strings.Contains(l, "guestnet: ready") {
				t.Logf("guest console:\n%s", strings.Join(console, "\n"))
				go func() {
					for range lines { // keep QEMU's stdout drained
					}
				}()
				return
			}
		case <-timeout:
			t.Fatalf("guest not ready within 2 minutes:\n%s", strings.Join(console, "\n"))
		}
	}
}
