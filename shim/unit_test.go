package shim

import (
	"context"
	"runtime"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vmpod/vmpod/config"
	agentpb "github.com/vmpod/vmpod/proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestSizeFor(t *testing.T) {
	q := config.QEMU{DefaultVCPUs: 1, DefaultMemory: 512}
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	withRes := func(r *specs.LinuxResources) *specs.Spec { return &specs.Spec{Linux: &specs.Linux{Resources: r}} }
	hostCPUs := uint32(runtime.NumCPU())
	for _, tc := range []struct {
		name string
		spec *specs.Spec
		want VMSize
	}{
		{"no spec", nil, VMSize{1, 512}},
		{"no resources", &specs.Spec{}, VMSize{1, 512}},
		{"memory rounds up to MiB", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(128<<20 + 1)}}), VMSize{1, 512 + 129}},
		{"cpu quota rounds up", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)}}), VMSize{min(2, max(hostCPUs, 1)), 512}},
		{"unlimited quota", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}}), VMSize{1, 512}},
		{"zero period ignored", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(1000), Period: u64(0)}}), VMSize{1, 512}},
		{"huge memory capped", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 62)}}), VMSize{1, config.MaxMemoryMiB}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := SizeFor(q, tc.spec); got != tc.want {
				t.Errorf("SizeFor = %+v, want %+v", got, tc.want)
			}
		})
	}
	// Many CPUs asked: no more vCPUs than the host has.
	big := withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(64 * 100000), Period: u64(100000)}})
	if got := SizeFor(q, big).VCPUs; got > max(hostCPUs, q.DefaultVCPUs) {
		t.Errorf("%d vCPUs on a %d-CPU host", got, hostCPUs)
	}
}

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
