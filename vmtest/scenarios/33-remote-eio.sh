#!/bin/sh
# With --retries 0 the same exporter kill surfaces EIO promptly (within
# timeout x (retries+1) plus a ping interval), and the device can still be
# removed with the exporter gone.
# timeout: 180
set -eu
. /tests/lib.sh
need_dst

backing=$VMTEST_TMP/export.img
mk_file "$backing" 32
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
run_bg att "$DST" attach --timeout 1s --retries 0 --ping 500ms dst://127.0.0.1:10811/disk
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/att.log") && [ -b "$dev" ]; do
	i=$((i + 1)); [ $i -le 600 ] || fail "no device within 30s"; sleep 0.05
done
dd if=/dev/urandom of="$dev" bs=4k count=8 oflag=direct status=none || fail "write before the kill failed"
stop_bg exp KILL 5 || true
start=$(awk '{print $1}' /proc/uptime)
if dd if=/dev/zero of="$dev" bs=4k count=1 seek=100 oflag=direct status=none 2>"$VMTEST_TMP/dd.err"; then
	fail "a write with the exporter gone and --retries 0 succeeded"
fi
took=$(awk -v s="$start" '{printf "%.1f", $1 - s}' /proc/uptime)
log "write failed after ${took}s: $(cat "$VMTEST_TMP/dd.err")"
grep -qi "input/output error" "$VMTEST_TMP/dd.err" || fail "the error is not EIO: $(cat "$VMTEST_TMP/dd.err")"
# Bound: timeout (1s) x 1 attempt, plus one ping interval, plus slack for
# the emulated guest.
awk -v t="$took" 'BEGIN {exit !(t < 6)}' || fail "EIO took ${took}s, want under 6s"
t0=$(awk '{print $1}' /proc/uptime)
stop_bg att TERM 30 || fail "dst attach did not exit cleanly with the exporter gone"
wait_for_gone "$dev" 10
log "device removed in $(awk -v s="$t0" '{printf "%.1f", $1 - s}' /proc/uptime)s with the exporter gone"
[ "$("$DST" list --json | jq length)" = 0 ] || fail "dst list is not empty"
