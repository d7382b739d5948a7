#!/bin/sh
# The start script of dst-attach@.service (dist/systemd/dst-attach-unit),
# run as systemd runs it: the first start attaches --recoverable as
# /dev/ublkb$DST_ID; the daemon is SIGKILLed under fio verify (a crash) and
# the next start (systemd's Restart=on-failure) finds the device and runs
# dst recover: fio ends with no error. SIGTERM (systemctl stop) removes the
# device; with DST_KEEP_DEVICE=1 a stop and a start (systemctl restart)
# keep it and the data reads back.
# timeout: 150
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
need_dst
unit=/usr/local/bin/dst-attach-unit
[ -x "$unit" ] || skip "no $unit (vmtest/run.sh adds dist/systemd/dst-attach-unit)"
need_cmd fio

on_exit "$DST del --all >/dev/null 2>&1"
backing=$VMTEST_TMP/export.img
mk_file "$backing" 48
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	bg_alive exp || fail "exporter exited: $(tail -n 2 "$VMTEST_TMP/exp.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done

# What EnvironmentFile=/etc/dst/attach/disk0.env and Environment=DST=... give.
export DST DST_URL=dst://127.0.0.1:10811/disk DST_ID=7 DST_OPTIONS="--timeout 2s --retries 15 --ping 1s"
dev=/dev/ublkb7

# First start: attach.
run_bg u1 "$unit" disk0
[ "$(dev_of u1 30)" = "$dev" ] || fail "the first start did not create $dev"
! grep -q "recovering" "$VMTEST_TMP/u1.log" || fail "the first start tried to recover"
[ "$(dev_field 7 recoverable)" = true ] || fail "the unit's device is not recoverable"

# A crash under fio verify; systemd starts the unit again after RestartSec=1.
fio_bg 1 "$dev" 24M
sleep 2
t_kill=$(now)
stop_bg u1 KILL 10 || true
sleep 1
run_bg u2 "$unit" disk0
[ "$(dev_of u2 30)" = "$dev" ] || fail "the restart did not serve $dev again"
grep -q "exists: recovering it" "$VMTEST_TMP/u2.log" || fail "the restart did not recover: $(head -n 3 "$VMTEST_TMP/u2.log")"
log "restart after the crash: $dev served again $(secs "$t_kill" "$(now)") s after the kill ($(recover_times u2))"
fio_check 1
[ "$(dev_field 7 state)" = live ] || fail "device 7 is $(dev_field 7 state) after the restart"

# systemctl stop (DST_KEEP_DEVICE=0): the device goes.
stop_bg u2 TERM 30 || fail "the recovered daemon did not exit cleanly on SIGTERM"
wait_for_gone "$dev" 10

# DST_KEEP_DEVICE=1: systemctl restart keeps the device and its data.
export DST_KEEP_DEVICE=1
dd if=/dev/urandom of="$VMTEST_TMP/pattern" bs=1M count=4 status=none
run_bg u3 "$unit" disk0
[ "$(dev_of u3 30)" = "$dev" ] || fail "the start with DST_KEEP_DEVICE=1 did not create $dev"
dd if="$VMTEST_TMP/pattern" of="$dev" bs=1M oflag=direct status=none
stop_bg u3 TERM 30 || fail "the daemon did not exit with status 0 on SIGTERM with DST_KEEP_DEVICE=1"
wait_state 7 quiesced 10
run_bg u4 "$unit" disk0
[ "$(dev_of u4 30)" = "$dev" ] || fail "the start after the stop did not serve $dev"
grep -q "exists: recovering it" "$VMTEST_TMP/u4.log" || fail "the start after the stop did not recover"
dd if="$dev" of="$VMTEST_TMP/back" bs=1M count=4 iflag=direct status=none
cmp -s "$VMTEST_TMP/back" "$VMTEST_TMP/pattern" || fail "the data written before the restart does not read back"
stop_bg u4 TERM 30 || fail "the recovered daemon did not exit on SIGTERM"
wait_state 7 quiesced 10
"$DST" del 7 >/dev/null || fail "dst del 7 failed"
wait_for_gone "$dev" 10
n=$(grep -c "new requests wait for them" "$VMTEST_TMP/exp.log" || true)
log "exporter: $n resumes found transactions still executing (recovery barrier)"
stop_bg exp TERM 30 || true
log "dst-attach-unit: attach, crash + recover under fio verify, stop removes, keep-device restart keeps the data"
