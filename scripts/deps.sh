#!/usr/bin/env bash
# Installs what the host tests need beyond Go, idempotently: util-linux's
# losetup (loop devices for the backend tests), strace (the writev check),
# shellcheck (lint), liburing-dev (the C baseline of `make bench`) and the
# standard NBD peers the NBD exporter is tested against: libnbd-bin (nbdinfo,
# nbdcopy), qemu-utils (qemu-io, qemu-img, qemu-nbd), nbdkit, nbd-server, fio.
set -euo pipefail
need=()
command -v losetup >/dev/null || need+=(util-linux)
command -v strace >/dev/null || need+=(strace)
command -v shellcheck >/dev/null || need+=(shellcheck)
[ -f /usr/include/liburing.h ] || need+=(liburing-dev)
command -v gcc >/dev/null || need+=(gcc)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v nbd-server >/dev/null || need+=(nbd-server)
command -v fio >/dev/null || need+=(fio)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps.sh: missing ${need[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "deps.sh: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
		apt-get update -qq
		apt-get install -y -qq "${need[@]}" >/dev/null
	}
fi
