#!/bin/sh
# Kernel baselines for the device benchmarks: null_blk (label null_blk) and
# the loop driver with direct I/O over a 256 MiB tmpfs file (label loop-dio).
# timeout: 400
set -eu
. /tests/bench/lib.sh

null_blk_load
log "null_blk: max_sectors_kb=$(cat /sys/block/nullb0/queue/max_sectors_kb)"
bench_device /dev/nullb0 null_blk

bench_backing_file "$VMTEST_TMP/backing" 256
dev=$(mk_loop "$VMTEST_TMP/backing" on)
[ "$(cat "/sys/block/${dev#/dev/}/loop/dio")" = 1 ] || fail "$dev: direct I/O not enabled"
bench_device "$dev" loop-dio
