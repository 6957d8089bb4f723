package agent

import (
	"fmt"
	"path/filepath"
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

// idPattern is what ids must match. The matchers below are written out
// rather than compiled regexps: the agent's package initialisation runs in
// every container process start too (libcontainer re-executes the agent as
// its init), and compiling the {0,127} repetition cost about 2000
// allocations there, some 10 ms under TCG (docs/performance.md, "Exec and
// process start").
const idPattern = `^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`

// validateID checks a container or exec id; what names the field.
func validateID(what, id string) error {
	if !matchName(id, 128, "_.-") {
		return fmt.Errorf("%s %q: must match %s: %w", what, id, idPattern, errdefs.ErrInvalidArgument)
	}
	return nil
}

// matchName reports whether s is 1 to max bytes of ASCII letters, digits
// and the bytes of extra, and begins with a letter or digit.
func matchName(s string, max int, extra string) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || strings.IndexByte(extra, c) < 0) {
			return false
		}
	}
	return true
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

// hostnamePattern is what host names must match (matched by matchName,
// see idPattern).
const hostnamePattern = `^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})?$`

// validateHostname accepts RFC 1123 host names of at most 64 bytes
// (HOST_NAME_MAX).
func validateHostname(h string) error {
	if !matchName(h, 63, ".-") {
		return fmt.Errorf("hostname %q: must match %s: %w", h, hostnamePattern, errdefs.ErrInvalidArgument)
	}
	return nil
}
