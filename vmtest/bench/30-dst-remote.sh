#!/bin/sh
# The remote device (label dst-remote: dst export + dst attach over
# loopback TCP) against the kernel NBD client with Debian's nbd-server
# (label nbd, one connection), both on the same 256 MiB tmpfs backing file.
# timeout: 600
set -eu
. /tests/bench/lib.sh
need_dst
need_cmd nbd-server nbd-client

backing=$VMTEST_TMP/backing
bench_backing_file "$backing" 256

# Kernel baseline: nbd.ko + nbd-client talking to nbd-server.
nbd_server_start "$backing"
bench_kernel_nbd nbd $((256 << 20))
nbd_server_stop

# DST on the same file.
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
# shellcheck disable=SC2086 # DST_ATTACH_ARGS is a list of options
run_bg att "$DST" attach ${DST_ATTACH_ARGS:-} dst://127.0.0.1:10811/disk
dev=$(dst_device att 30) || fail "dst attach gave no device"
bench_device "$dev" dst-remote nbd
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
stop_bg exp TERM 30 || true
