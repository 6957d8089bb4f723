package agent

import (
	"context"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestInterceptorRecoversPanic(t *testing.T) {
	info := &ttrpc.UnaryServerInfo{FullMethod: "/vmpod.agent.v1.Agent/Check"}
	_, err := unaryInterceptor(context.Background(), nil, info, func(context.Context, func(any) error) (any, error) {
		var m map[string]int
		m["boom"]++ // nil map write
		return nil, nil
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panic became %v, want Internal", err)
	}
}

func TestInterceptorMapsErrors(t *testing.T) {
	info := &ttrpc.UnaryServerInfo{FullMethod: "/m"}
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("container x: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("dup: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("exited: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
	} {
		_, err := unaryInterceptor(context.Background(), nil, info, func(context.Context, func(any) error) (any, error) {
			return nil, c.err
		})
		if status.Code(err) != c.code {
			t.Errorf("%v: got %v, want %v", c.err, status.Code(err), c.code)
		}
		if s, _ := status.FromError(err); s.Message() != c.err.Error() {
			t.Errorf("message %q, want %q", s.Message(), c.err.Error())
		}
	}
}
