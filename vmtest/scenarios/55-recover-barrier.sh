#!/bin/sh
# The exporter's recovery barrier (PROTOCOL.md §5.4 step 3) in a real
# recovery. Every storage operation of the exporter takes 2 s
# (--fault-latency). A direct write of A to block 0 is executing at the
# exporter when the attach daemon is SIGKILLed; dst recover starts at once
# and resumes the session while that write still executes. The exporter must
# hold the new daemon's requests (it logs so) until the old write has
# completed; the write the kernel reissued completes without error, a later
# write of B to the same block is what block 0 holds at the end, and the
# session was resumed, not replaced.
# timeout: 120
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
need_dst

on_exit "$DST del --all >/dev/null 2>&1"
backing=$VMTEST_TMP/export.img
mk_file "$backing" 16
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw --fault-latency 2s
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	bg_alive exp || fail "exporter exited: $(tail -n 2 "$VMTEST_TMP/exp.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
run_bg a0 "$DST" attach --recoverable --timeout 10s --retries 6 --ping 2s dst://127.0.0.1:10811/disk
dev=$(dev_of a0 30)
id=${dev#/dev/ublkb}

dd if=/dev/urandom of="$VMTEST_TMP/A" bs=4k count=1 status=none
dd if=/dev/urandom of="$VMTEST_TMP/B" bs=4k count=1 status=none
dd if="$VMTEST_TMP/A" of="$dev" bs=4k count=1 oflag=direct status=none &
writer=$!
sleep 0.7 # the write has reached the exporter, which takes 2 s to do it
t_kill=$(now)
stop_bg a0 KILL 10 || true
run_bg a1 "$DST" recover "$id"
[ "$(dev_of a1 30)" = "$dev" ] || fail "dst recover did not serve $dev"
wait "$writer" || fail "the write in flight at the crash failed"
log "the write in flight at the crash completed $(secs "$t_kill" "$(now)") s after the kill"
grep -q "new requests wait for them" "$VMTEST_TMP/exp.log" ||
	fail "the exporter did not hold the new daemon's requests behind the write still executing: $(grep -i "resum" "$VMTEST_TMP/exp.log" | tail -n 3)"
! grep -q "no longer holds the session\|not resumed" "$VMTEST_TMP/a1.log" || fail "the session was not resumed"
dd if="$VMTEST_TMP/B" of="$dev" bs=4k count=1 oflag=direct status=none || fail "the write of B failed"
dd if="$dev" of="$VMTEST_TMP/got" bs=4k count=1 iflag=direct status=none
cmp -s "$VMTEST_TMP/got" "$VMTEST_TMP/B" || fail "block 0 does not hold B, the last write acknowledged"
stop_bg a1 TERM 60 || fail "dst recover did not exit cleanly"
wait_for_gone "$dev" 10
dd if="$backing" of="$VMTEST_TMP/disk0" bs=4k count=1 status=none
cmp -s "$VMTEST_TMP/disk0" "$VMTEST_TMP/B" || fail "the export's block 0 does not hold B"
log "exporter: $(grep -c "new requests wait for them" "$VMTEST_TMP/exp.log") resume(s) held behind executing transactions; block 0 = B"
stop_bg exp TERM 30 || true
