// Command guestnet is the guest /init of the network package's VM test. It
// loads the image's modules, configures the guest's NICs through the real
// agent's network RPCs with what network.Setup produced (protojson files in
// the image), prints a ready line on the console and answers UDP datagrams
// on port 7777 with a marker, so that the host can tell the guest answered
// and not the pod's network namespace, which holds the same address.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/vmpod/vmpod/agent"
	"github.com/vmpod/vmpod/kmod"
	agentpb "github.com/vmpod/vmpod/proto"
)

// Files the test puts in the image, and the port it talks to.
const (
	InterfacesFile = "/etc/vmpod/test-interfaces.json"
	RoutesFile     = "/etc/vmpod/test-routes.json"
	EchoPort       = 7777
	Marker         = "vmpod-guest "
)

// lifetime bounds the guest's life should the test never stop QEMU.
const lifetime = 5 * time.Minute

func main() {
	if err := run(); err != nil {
		fmt.Println("guestnet: error:", err)
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour) // PID 1 must not exit
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), lifetime)
	defer cancel()
	dir, err := kmod.ModulesDir()
	if err != nil {
		return err
	}
	if err := kmod.LoadListed(kmod.ListPath, dir); err != nil {
		return fmt.Errorf("load modules: %w", err)
	}
	ifs, routes := &agentpb.Interfaces{}, &agentpb.Routes{}
	if err := readJSON(InterfacesFile, ifs); err != nil {
		return err
	}
	if err := readJSON(RoutesFile, routes); err != nil {
		return err
	}
	srv, err := agent.New(agent.Config{StateDir: "/run/guestnet"})
	if err != nil {
		return err
	}
	for _, itf := range ifs.GetInterfaces() {
		if err := waitLink(ctx, itf.GetName()); err != nil {
			return err
		}
		got, err := srv.UpdateInterface(ctx, &agentpb.UpdateInterfaceRequest{Interface: itf})
		if err != nil {
			return fmt.Errorf("UpdateInterface %s: %w", itf.GetName(), err)
		}
		fmt.Println("guestnet: interface", protojson.Format(got))
	}
	got, err := srv.UpdateRoutes(ctx, &agentpb.UpdateRoutesRequest{Routes: routes})
	if err != nil {
		return fmt.Errorf("UpdateRoutes: %w", err)
	}
	fmt.Println("guestnet: routes", protojson.Format(got))
	return echo(ctx)
}

func readJSON(path string, m proto.Message) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(raw, m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// waitLink waits for the virtio-net driver to register name.
func waitLink(ctx context.Context, name string) error {
	for {
		if _, err := net.InterfaceByName(name); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no interface %s: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// echo answers every datagram on EchoPort with Marker and its payload.
func echo(ctx context.Context) error {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: EchoPort})
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Println("guestnet: ready")
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			continue
		}
		_, _ = conn.WriteToUDP(append([]byte(Marker), buf[:n]...), from)
	}
	return ctx.Err()
}
