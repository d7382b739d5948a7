#!/bin/sh
# The NBD client side: dst attach nbd:// (label dst-nbd) against the kernel
# NBD client (label nbd-kernel, nbd.ko + nbd-client, one connection), both
# talking to the same Debian nbd-server over loopback TCP, on the same
# 256 MiB tmpfs backing file. The server is the same for both, so the
# ratio is the client's.
# timeout: 600
set -eu
. /tests/bench/lib.sh
need_dst
need_cmd nbd-server nbd-client

backing=$VMTEST_TMP/backing
bench_backing_file "$backing" 256

nbd_server_start "$backing"
bench_kernel_nbd nbd-kernel $((256 << 20))

run_bg att "$DST" attach nbd://127.0.0.1:10809/disk
dev=$(dst_device att 30) || fail "dst attach gave no device"
bench_device "$dev" dst-nbd nbd-kernel
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
nbd_server_stop
