package agent

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
)

// Bounds on what one request may carry. They keep a confused or hostile
// host from making the agent allocate without limit.
const (
	// MaxSpecSize bounds an OCI spec, process spec or resources document.
	MaxSpecSize = 1 << 20
	// maxMounts bounds the mounts of one request.
	maxMounts = 128
	// maxMountOptions bounds the options of one mount.
	maxMountOptions = 64
	// maxStringLen bounds paths, option strings and names.
	maxStringLen = 4096
)

var idPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

// validateID checks a container or exec id; what names the field.
func validateID(what, id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%s %q: must match %s: %w", what, id, idPattern, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateExecID accepts the empty exec id (the init process) or a valid id.
func validateExecID(id string) error {
	if id == "" {
		return nil
	}
	return validateID("exec id", id)
}

// validateGuestPath checks that p is absolute, clean and free of "..", so
// that it names exactly one place in the guest.
func validateGuestPath(what, p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%s: empty path: %w", what, errdefs.ErrInvalidArgument)
	case len(p) > maxStringLen:
		return fmt.Errorf("%s: path longer than %d bytes: %w", what, maxStringLen, errdefs.ErrInvalidArgument)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%s %q: not an absolute path: %w", what, p, errdefs.ErrInvalidArgument)
	case filepath.Clean(p) != p:
		return fmt.Errorf("%s %q: not a clean path: %w", what, p, errdefs.ErrInvalidArgument)
	case strings.Contains(p, "\x00"):
		return fmt.Errorf("%s %q: contains NUL: %w", what, p, errdefs.ErrInvalidArgument)
	}
	for _, elem := range strings.Split(p, "/") {
		if elem == ".." {
			return fmt.Errorf("%s %q: escapes with \"..\": %w", what, p, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

var hostnamePattern = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})?$`)

// validateHostname accepts RFC 1123 host names of at most 64 bytes
// (HOST_NAME_MAX).
func validateHostname(h string) error {
	if !hostnamePattern.MatchString(h) {
		return fmt.Errorf("hostname %q: must match %s: %w", h, hostnamePattern, errdefs.ErrInvalidArgument)
	}
	return nil
}
