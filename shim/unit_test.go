package shim

import (
	"context"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	agentpb "github.com/vmpod/vmpod/proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestConfigPathOption(t *testing.T) {
	if p, err := configPath(nil); p != "" || err != nil {
		t.Errorf("nil options: %q, %v", p, err)
	}
	data, err := proto.Marshal(&runtimeoptions.Options{ConfigPath: "/etc/x.toml"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := configPath(&anypb.Any{TypeUrl: "runtimeoptions.v1.Options", Value: data})
	if err != nil || p != "/etc/x.toml" {
		t.Errorf("runtimeoptions: %q, %v", p, err)
	}
	// runc's options (or anything else) are not ours: ignored.
	if p, err := configPath(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{1, 2}}); p != "" || err != nil {
		t.Errorf("foreign options: %q, %v", p, err)
	}
	if _, err := configPath(&anypb.Any{TypeUrl: "runtimeoptions.v1.Options", Value: []byte{0xff, 0xff}}); err == nil {
		t.Error("garbage runtimeoptions accepted")
	}
}

// TestEventQueueKeepsOrder sends from one goroutine and checks the
// forwarder publishes in that order and closes the publisher.
func TestEventQueueKeepsOrder(t *testing.T) {
	q := newEventQueue()
	pub := &recorder{}
	go q.forward(context.Background(), pub)
	q.send(&eventstypes.TaskCreate{ContainerID: "c"})
	q.send(&eventstypes.TaskStart{ContainerID: "c"})
	q.send(&eventstypes.TaskOOM{ContainerID: "c"})
	q.send(&eventstypes.TaskExit{ContainerID: "c", ID: "c"})
	q.send(&eventstypes.TaskDelete{ContainerID: "c"})
	q.close()
	<-q.done
	q.send(&eventstypes.TaskPaused{}) // after close: dropped, no panic
	got := pub.names()
	want := []string{"create", "start", "oom", "exit:c", "delete"}
	if len(got) != len(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %v, want %v", got, want)
		}
	}
	if !pub.closed {
		t.Error("publisher not closed after the queue")
	}
}

func TestMetricsFromAgent(t *testing.T) {
	m := metricsFromAgent(&agentpb.StatsContainerResponse{
		Cpu:    &agentpb.CPUStats{UsageUsec: 10},
		Memory: &agentpb.MemoryStats{UsageBytes: 4096, LimitBytes: 8192, OomKillEvents: 1},
		Pids:   &agentpb.PidsStats{Current: 3},
		Io: &agentpb.IOStats{ServiceBytes: []*agentpb.IOEntry{
			{Major: 8, Minor: 0, Op: "Read", Value: 100}, {Major: 8, Minor: 0, Op: "Write", Value: 200},
		}},
	})
	if m.CPU.UsageUsec != 10 || m.Memory.Usage != 4096 || m.Memory.UsageLimit != 8192 || m.MemoryEvents.OomKill != 1 || m.Pids.Current != 3 {
		t.Errorf("metrics %+v", m)
	}
	if len(m.Io.Usage) != 1 || m.Io.Usage[0].Rbytes != 100 || m.Io.Usage[0].Wbytes != 200 {
		t.Errorf("io %+v", m.Io)
	}
}
