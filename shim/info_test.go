package shim

import (
	"bytes"
	"slices"
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
)

// TestFeaturesMatchLibcontainer: the mount options and namespaces the
// shim advertises are those the guest agent's libcontainer knows (runc's
// `features` takes them from specconv, which the cgo-less shim cannot
// import).
func TestFeaturesMatchLibcontainer(t *testing.T) {
	f := Features()
	if want := specconv.KnownMountOptions(); !slices.Equal(f.MountOptions, want) {
		t.Errorf("mount options:\n%v\nlibcontainer knows:\n%v", f.MountOptions, want)
	}
	if want := specconv.KnownNamespaces(); !slices.Equal(f.Linux.Namespaces, want) {
		t.Errorf("namespaces:\n%v\nlibcontainer knows:\n%v", f.Linux.Namespaces, want)
	}
}

func TestInfoRejectsBadOptions(t *testing.T) {
	if _, err := Info("x", bytes.NewReader([]byte{0xff, 0xff, 0xff})); err == nil {
		t.Error("options that are not a protobuf Any accepted")
	}
	if _, err := Info("x", bytes.NewReader(make([]byte, maxInfoOptions+1))); err == nil {
		t.Error("options over the size bound accepted")
	}
}
