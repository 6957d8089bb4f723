#!/usr/bin/env bash
# Prints the bin directory of a pinned containerd 2.x (containerd, ctr,
# containerd-shim-runc-v2), building it from the Go module proxy on first
# use. The build is cached outside the checkout, keyed by version, so that
# tests and CI build it once per machine (a few minutes on 2 cores):
#   ${VMPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmpod}/containerd-<version>/bin
# Progress goes to stderr; stdout is only the bin directory.
#   CONTAINERD2_VERSION  the version to build (default below, what CI tests)
set -euo pipefail

version=${CONTAINERD2_VERSION:-v2.4.2}
cache=${VMPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmpod}
dir=$cache/containerd-$version
bin=$dir/bin
cmds=(containerd ctr containerd-shim-runc-v2)

complete() {
	for c in "${cmds[@]}"; do [ -x "$bin/$c" ] || return 1; done
}

if complete; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
# One build at a time: a second caller waits for the first (bounded).
exec 9>"$cache/containerd-$version.lock"
if ! flock -w 1800 9; then
	echo "containerd2.sh: timed out waiting for $cache/containerd-$version.lock" >&2
	exit 1
fi
if complete; then
	echo "$bin"
	exit 0
fi

tmp=$(mktemp -d "$cache/containerd-$version.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Built outside any module (go install pkg@version) so that vmpod's go.mod
# (containerd v1.7) does not take part. The no_* tags leave out the
# btrfs, devmapper and zfs snapshotters (their headers and libraries are
# not installed; the tests use overlayfs). cgo is Go's default (on where
# gcc is).
tags=no_btrfs,no_devmapper,no_zfs
for c in "${cmds[@]}"; do
	echo "containerd2.sh: building $c $version (tags $tags) into $dir" >&2
	(cd "$tmp" && GOFLAGS=-buildvcs=false GOBIN="$tmp/bin" go install -tags "$tags" \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$version" \
		"github.com/containerd/containerd/v2/cmd/$c@$version") >&2
done
"$tmp/bin/containerd" --version >&2
rm -rf "$dir"
mkdir -p "$dir"
mv "$tmp/bin" "$bin"
echo "$bin"
