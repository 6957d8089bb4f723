package shim

import (
	"context"
	"fmt"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	cshim "github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/ttrpc"
)

// Register makes the task service the shim's ttrpc plugin; containerd's
// shim package loads it when the binary serves. newSandbox starts the
// sandbox of the first container.
func Register(newSandbox SandboxFactory) {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			publisher, ok := pp.(events.Publisher)
			if !ok {
				return nil, fmt.Errorf("event plugin is a %T, not a publisher", pp)
			}
			sd := ss.(shutdown.Service)
			if address, err := cshim.ReadAddress("address"); err == nil {
				sd.RegisterCallback(func(context.Context) error { return cshim.RemoveSocket(address) })
			}
			return ttrpcTask{NewService(ic.Context, publisher, sd, ServiceOptions{NewSandbox: newSandbox})}, nil
		},
	})
}

// ttrpcTask registers a task service on the shim's ttrpc server.
type ttrpcTask struct{ taskAPI.TaskService }

func (t ttrpcTask) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, t.TaskService)
	return nil
}
