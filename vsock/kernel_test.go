package vsock_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/vmpod/vmpod/vsock"
)

// This machine has no /dev/vhost-vsock; these tests check that the kernel
// path fails cleanly and promptly there. Where the device exists they
// check a real allocation.
func TestAllocateCID(t *testing.T) {
	if _, _, err := vsock.AllocateCID(2, 10); err == nil {
		t.Fatal("range including the host's CID accepted")
	}
	cid, f, err := vsock.AllocateCID(1000, 2000)
	if _, statErr := os.Stat(vsock.VhostVsockPath); statErr != nil {
		if err == nil {
			t.Fatalf("allocated CID %d without %s", cid, vsock.VhostVsockPath)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cid < 1000 || cid > 2000 {
		t.Fatalf("CID %d outside [1000, 2000]", cid)
	}
}

func TestDialKernelFailsPromptly(t *testing.T) {
	if _, err := os.Stat(vsock.VhostVsockPath); err == nil {
		t.Skip("a real vhost-vsock is present; nothing listens on the CID tried here")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := vsock.DialKernel(ctx, 4000, 1024); err == nil {
		c.Close()
		t.Fatal("dial to a CID with no VM succeeded")
	}
	if ctx.Err() != nil {
		t.Fatal("dial hung until the context expired")
	}
}
