#!/usr/bin/env bash
# Builds vmpod's guest kernel and prints the path of its vmlinux (the only
# line on stdout; progress goes to stderr).
#
# Source: Debian's linux-source-6.1 package (/usr/src/linux-source-6.1.tar.xz,
# installed by `make deps`). Configuration: allnoconfig, then the fragments
# in kernel/configs/fragments merged with the kernel's merge_config.sh, then
# olddefconfig; kconfigcheck then fails the build naming any option a
# fragment asks for that the source does not have or that did not end up
# as asked.
#
# The result is cached outside the checkout, under
# $KERNEL_CACHE/<key>/{vmlinux,vmlinux.config}, where the key hashes the
# source package's version, the fragments, the compiler's version and
# build_rev (bump it when a change here changes what is built): a second
# run, or another clone on the same machine, reuses it. vmlinux.config
# next to the kernel is what vmpod check and the shim read.
#
# Environment: KERNEL_CACHE (default /var/cache/vmpod/kernel), KERNEL_JOBS
# (default nproc), GO (default go).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
src_pkg=linux-source-6.1
src_tar=/usr/src/linux-source-6.1.tar.xz
frag_dir=$here/kernel/configs/fragments
cache=${KERNEL_CACHE:-/var/cache/vmpod/kernel}
jobs=${KERNEL_JOBS:-$(nproc)}
GO=${GO:-go}

# Bump when the steps below change the kernel they produce.
build_rev=1

log() { echo "kernel: $*" >&2; }

if [ ! -f "$src_tar" ]; then
	echo "kernel: $src_tar is missing: install $src_pkg (make deps, or apt-get install $src_pkg)" >&2
	exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || true)
if [ -z "$src_version" ]; then
	echo "kernel: cannot read the version of $src_pkg (dpkg-query)" >&2
	exit 1
fi
shopt -s nullglob
fragments=("$frag_dir"/*.conf)
shopt -u nullglob
if [ "${#fragments[@]}" -eq 0 ]; then
	echo "kernel: no config fragments in $frag_dir" >&2
	exit 1
fi

key=$(
	{
		echo "rev $build_rev source $src_pkg $src_version"
		gcc --version | head -1
		for f in "${fragments[@]}"; do echo "fragment $(basename "$f")"; cat "$f"; done
	} | sha256sum | cut -c1-16
)
out=$cache/$key
if [ -f "$out/vmlinux" ]; then
	log "cached: $out/vmlinux ($src_pkg $src_version)"
	echo "$out/vmlinux"
	exit 0
fi

mkdir -p "$cache"
build=$(mktemp -d "$cache/.build-$key.XXXXXX")
trap 'rm -rf "$build"' EXIT
start=$(date +%s)
log "building $src_pkg $src_version with ${#fragments[@]} fragments into $out ($jobs jobs; a few minutes on 2 cores)"
log "unpacking $src_tar"
tar -C "$build" -xf "$src_tar" --strip-components=1
cd "$build"
log "configuring: allnoconfig + $(cd "$frag_dir" && echo *.conf)"
make -s allnoconfig >&2
# -m: merge only (olddefconfig below fills in the rest); merge_config.sh
# warns about overridden values but never fails, hence kconfigcheck.
scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >"$build/merge.log" 2>&1 ||
	{ cat "$build/merge.log" >&2; exit 1; }
make -s olddefconfig >&2
(cd "$here" && "$GO" run ./internal/cmd/kconfigcheck -src "$build" -config "$build/.config" "${fragments[@]}") >&2
log "compiling (make -j$jobs vmlinux, niced)"
# One line per 200 compiled files, so that progress shows without the
# full log; the full log is printed when the build fails.
set +e
nice -n 10 make -j"$jobs" vmlinux 2>&1 | tee "$build/build.log" |
	awk '/^  CC /{n++; if (n%200==0) {printf "kernel: %d files compiled\n", n > "/dev/stderr"; fflush("/dev/stderr")}}'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
	tail -50 "$build/build.log" >&2
	log "build failed (status $status)"
	exit 1
fi
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/vmlinux.config"
echo "$src_pkg $src_version" >"$out.tmp/source"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $out/vmlinux in $(($(date +%s) - start)) s"
echo "$out/vmlinux"
