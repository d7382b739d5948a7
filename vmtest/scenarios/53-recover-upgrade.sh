#!/bin/sh
# Planned upgrade: a daemon started with --recoverable --keep-device leaves
# its device quiesced on SIGTERM (exit 0, dst list shows it quiesced, I/O
# waits); `dst recover` resumes it, the waiting I/O completes, and the data
# written before reads back. Twice for a file device, once for a remote one.
# timeout: 150
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
need_dst

on_exit "$DST del --all >/dev/null 2>&1"
dd if=/dev/urandom of="$VMTEST_TMP/pattern" bs=1M count=4 status=none

# upgrade OLD NEW DEV: SIGTERM daemon OLD, check the device is left
# quiesced with I/O waiting, start `dst recover` as daemon NEW, check the
# waiting read completes and the pattern reads back.
upgrade() {
	_id=${3#/dev/ublkb}
	stop_bg "$1" TERM 30 || fail "dst $1 did not exit with status 0 after SIGTERM with --keep-device"
	grep -q "device left for dst recover" "$VMTEST_TMP/$1.log" || fail "dst $1 did not say it left the device"
	wait_state "$_id" quiesced 10
	[ "$(dev_field "$_id" running)" = false ] || fail "dst list shows a running owner for the quiesced device"
	log "after SIGTERM: $("$DST" list | tail -n +2)"
	[ -b "$3" ] || fail "$3 vanished"
	# A read now waits for the next daemon.
	dd if="$3" of="$VMTEST_TMP/waited" bs=4k count=1 skip=5 iflag=direct status=none &
	_rd=$!
	sleep 1
	kill -0 "$_rd" 2>/dev/null || fail "a read of the quiesced device did not wait"
	_t=$(now)
	run_bg "$2" "$DST" recover "$_id"
	[ "$(dev_of "$2" 30)" = "$3" ] || fail "dst recover did not serve $3 again"
	wait "$_rd" || fail "the read that waited failed"
	log "dst recover: the waiting read completed $(secs "$_t" "$(now)") s after dst recover started ($(recover_times "$2"))"
	dd if="$VMTEST_TMP/pattern" of="$VMTEST_TMP/expected" bs=4k count=1 skip=5 status=none
	cmp -s "$VMTEST_TMP/waited" "$VMTEST_TMP/expected" || fail "the read that waited returned other data"
	dd if="$3" of="$VMTEST_TMP/back" bs=1M count=4 iflag=direct status=none
	cmp -s "$VMTEST_TMP/back" "$VMTEST_TMP/pattern" || fail "the data written before the upgrade does not read back"
	[ "$(dev_field "$_id" state)" = live ] || fail "device $_id is $(dev_field "$_id" state) after dst recover"
}

# File device, upgraded twice (the record keeps --keep-device).
backing=$VMTEST_TMP/backing.img
mk_file "$backing" 32
run_bg f0 "$DST" add file --path "$backing" --recoverable --keep-device
dev=$(dev_of f0 20)
dd if="$VMTEST_TMP/pattern" of="$dev" bs=1M oflag=direct status=none
upgrade f0 f1 "$dev"
upgrade f1 f2 "$dev"
"$DST" del "${dev#/dev/ublkb}" >/dev/null || fail "dst del failed"
stop_bg f2 TERM 20 || fail "dst recover did not exit cleanly after dst del"
wait_for_gone "$dev" 10
log "file device upgraded twice, data intact; dst del ended it"

# Remote device: the attach daemon says goodbye to the exporter; the next
# daemon starts new sessions.
mk_file "$VMTEST_TMP/export.img" 32
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$VMTEST_TMP/export.img" --allow 127.0.0.1/32=rw
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	bg_alive exp || fail "exporter exited: $(tail -n 2 "$VMTEST_TMP/exp.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
run_bg a0 "$DST" attach --recoverable --keep-device --timeout 2s --ping 1s dst://127.0.0.1:10811/disk
dev=$(dev_of a0 30)
dd if="$VMTEST_TMP/pattern" of="$dev" bs=1M oflag=direct status=none
upgrade a0 a1 "$dev"
stop_bg a1 TERM 20 || fail "dst recover did not exit after SIGTERM"
wait_state "${dev#/dev/ublkb}" quiesced 10
"$DST" del "${dev#/dev/ublkb}" >/dev/null || fail "dst del failed"
wait_for_gone "$dev" 10
stop_bg exp TERM 30 || true
log "remote device upgraded, data intact"
