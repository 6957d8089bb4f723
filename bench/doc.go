// Package bench measures vmpod against floors and peers measured in the same
// run: a bare QEMU boot of the same kernel (an initrd whose /init powers off
// at once) for cold start, the stream floor (a guest process writing into
// AF_VSOCK, read straight from vmpod's vsock backend in the bench's own
// process) for stdout, and runc (io.containerd.runc.v2) under the same
// containerd for start, exec, stdout and density. The benchmarks are in the
// package's test files; `make bench` runs them and writes
// docs/benchmarks.md. Every figure is the median of several runs with min
// and max; targets are reported, never asserted.
//
// The non-test files hold what the benchmarks share and what is unit-tested
// on its own: summaries and the report, the containerd log parser behind
// the phase breakdown, and the /proc readers behind the memory figures.
package bench
