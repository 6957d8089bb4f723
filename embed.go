// Package vmpod holds files of the repository's top directory that the
// binaries embed; go:embed cannot reach a parent directory, so they live here.
package vmpod

import _ "embed"

// DefaultConfiguration is configuration.toml, the built-in defaults.
//
//go:embed configuration.toml
var DefaultConfiguration []byte
