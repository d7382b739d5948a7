#!/usr/bin/env bash
# make demo: DST's main job on an embedded default. A local exporter serves
# a 256 MiB file, `dst attach` makes a ublk device of it, and the device is
# used (ext4, an exporter restart under writes, fio). Where this kernel has
# no ublk driver, the same demo runs inside the test guest (qemu with
# Debian's Linux 6.12), which vmtest/setup.sh installs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e /dev/ublk-control ] || modprobe ublk_drv 2>/dev/null; then
	[ "$(id -u)" = 0 ] || { echo "demo: needs root (ublk devices)" >&2; exit 1; }
	echo "demo: this kernel has ublk; running on the host"
	DST="$PWD/bin/dst" exec scripts/demo/10-demo.sh
fi
echo "demo: this kernel has no ublk driver (/dev/ublk-control); running the demo in a qemu guest"
exec vmtest/run.sh --scenarios scripts/demo --verbose
