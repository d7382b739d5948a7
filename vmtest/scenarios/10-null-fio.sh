#!/bin/sh
# dst null target under fio: random reads at 4k, 64k and 1m, depth 1 and
# 32, must complete without errors and return zeroes (a verify job cannot
# pass on null: writes are dropped). Writes must complete too.
# timeout: 120
set -eu
. /tests/lib.sh
need_dst

run_bg dst "$DST" add null --size 256MiB
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/dst.log") && [ -b "$dev" ]; do
	bg_alive dst || fail "dst exited: $(tail -n 1 "$VMTEST_TMP/dst.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "dst showed no device within 20s"
	sleep 0.05
done
[ "$(dev_size "$dev")" = $((256 << 20)) ] || fail "$dev has $(dev_size "$dev") bytes, want 256 MiB"
log "null device $dev"
eng=$(fio_engine)
for rw in randread randwrite; do
	for bs in 4k 64k 1m; do
		for qd in 1 32; do
			out=$VMTEST_TMP/fio.json
			fio --name=null --filename="$dev" --ioengine="$eng" --direct=1 --rw=$rw --bs=$bs \
				--iodepth=$qd --io_size=16M --randrepeat=0 --output-format=json --output="$out" 2>"$out.err" ||
				{ tail -n 5 "$out.err" >&2; fail "fio $rw bs=$bs depth=$qd on $dev failed"; }
			jq -r --arg rw $rw --arg bs $bs --arg qd $qd '.jobs[0] | (if $rw == "randread" then .read else .write end) as $d
				| "\($rw) bs=\($bs) depth=\($qd): \($d.io_bytes/1048576|floor) MiB, \($d.iops|floor) IOPS, errors=\(.error)"' "$out"
			[ "$(jq '.jobs[0].error' "$out")" = 0 ] || fail "fio $rw bs=$bs depth=$qd reported an error"
		done
	done
done
# Reads return zeroes, wherever and however they are read.
for off in 0 1 97 255; do
	dd if="$dev" bs=1M skip=$off count=1 iflag=direct status=none | cmp -n 1048576 - /dev/zero ||
		fail "O_DIRECT read of 1 MiB at $off MiB is not zeroes"
done
dd if="$dev" bs=64k skip=100 count=16 status=none | cmp -n 1048576 - /dev/zero || fail "buffered read is not zeroes"
stop_bg dst TERM 10 || fail "dst did not exit cleanly"
wait_for_gone "$dev" 10
log "null target OK"
