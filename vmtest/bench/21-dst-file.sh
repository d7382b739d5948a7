#!/bin/sh
# dst file target (label dst-file) over a 256 MiB tmpfs file, compared with
# the kernel loop driver with direct I/O over the same kind of file (label
# loop-dio, from 10-kernel-baselines.sh) on the same job set.
# DST_FILE_ARGS (run.sh --env) adds dst options, e.g. "-q 2", to experiment.
# timeout: 300
set -eu
. /tests/bench/lib.sh
need_dst

bench_backing_file "$VMTEST_TMP/backing" 256
# shellcheck disable=SC2086 # DST_FILE_ARGS is a list of options
run_bg dst "$DST" add file --path "$VMTEST_TMP/backing" ${DST_FILE_ARGS:-}
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/dst.log") && [ -b "$dev" ]; do
	bg_alive dst || fail "dst exited: $(tail -n 1 "$VMTEST_TMP/dst.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "dst showed no device within 20s"
	sleep 0.05
done
log "$(grep 'backing file' "$VMTEST_TMP/dst.log")"
bench_device "$dev" dst-file loop-dio
stop_bg dst TERM 20 || fail "dst did not exit cleanly"
