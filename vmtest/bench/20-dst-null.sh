#!/bin/sh
# dst null target (label dst-null), compared with the kernel's null_blk
# (label null_blk, from 10-kernel-baselines.sh) on the same job set.
# timeout: 300
set -eu
. /tests/bench/lib.sh
need_dst

run_bg dst "$DST" add null --size 1GiB
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/dst.log") && [ -b "$dev" ]; do
	bg_alive dst || fail "dst exited: $(tail -n 1 "$VMTEST_TMP/dst.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "dst showed no device within 20s"
	sleep 0.05
done
bench_device "$dev" dst-null null_blk
stop_bg dst TERM 20 || fail "dst did not exit cleanly"
