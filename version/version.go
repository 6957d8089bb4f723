// Package version holds the version of the vmpod binaries, set at link time.
package version

// Version is set by the Makefile with -ldflags -X.
var Version = "dev"
