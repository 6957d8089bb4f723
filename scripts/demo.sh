#!/usr/bin/env bash
# make demo: on a fresh Debian 12 machine (as root), install what vmpod
# needs, build it and the guest image, start a private containerd, import a
# locally built busybox image and run a container in a VM that prints the
# guest's kernel release. Everything it starts is stopped and removed at
# the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

scripts/install-deps.sh
make build image

dir=$(mktemp -d /tmp/vmpod-demo.XXXXXX)
sock=$dir/containerd.sock
ctr=(ctr --address "$sock" --namespace vmpod-demo)
ctd_pid=

cleanup() {
	set +e
	"${ctr[@]}" task kill -s KILL demo >/dev/null 2>&1
	"${ctr[@]}" task delete demo >/dev/null 2>&1
	"${ctr[@]}" container delete demo >/dev/null 2>&1
	if [ -n "$ctd_pid" ]; then
		kill "$ctd_pid" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$ctd_pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$ctd_pid" 2>/dev/null
	fi
	grep -o " $dir[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
	rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
TOML

# containerd finds containerd-shim-kata-v2 on its PATH.
PATH=$PWD/bin:$PATH containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 100); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${ctr[@]}" version >/dev/null

go run ./internal/cmd/busybox-image | "${ctr[@]}" images import - >/dev/null

echo "host kernel:  $(uname -r)"
echo -n "guest kernel: "
"${ctr[@]}" run --rm --runtime io.containerd.kata.v2 docker.io/library/busybox:latest demo uname -r
