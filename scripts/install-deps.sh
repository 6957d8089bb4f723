#!/usr/bin/env bash
# Installs what building and testing vmpod needs on Debian 12, as root.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
	build-essential git make ca-certificates
	libseccomp-dev pkg-config
	protobuf-compiler
	qemu-system-x86
	linux-image-cloud-amd64
	containerd runc
	busybox-static
	iproute2 kmod iptables
	containernetworking-plugins
	# cross-checks the tests make (CI fails on a missing tool)
	cpio lz4
	# vmpod's guest kernel (make kernel): Debian's source and its build tools
	linux-source-6.1 flex bison bc libelf-dev xz-utils
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
go version
