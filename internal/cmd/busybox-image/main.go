// Command busybox-image writes a busybox OCI image archive to stdout, for
// `ctr image import` where no registry is reachable (make demo).
package main

import (
	"fmt"
	"os"

	"github.com/vmpod/vmpod/internal/ociimage"
)

func main() {
	b, err := ociimage.Busybox()
	if err != nil {
		fmt.Fprintln(os.Stderr, "busybox-image:", err)
		os.Exit(1)
	}
	if _, err := os.Stdout.Write(b); err != nil {
		fmt.Fprintln(os.Stderr, "busybox-image:", err)
		os.Exit(1)
	}
}
