#!/bin/sh
# dst recover refuses, with a clear message, a non-zero exit status and
# nothing changed: a device created without --recoverable (after SIGKILL
# of its daemon; `dst del` then removes it), a live device its daemon
# still serves, a device without a state record, a record that does not
# match the device, and a device that does not exist.
# timeout: 120
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
need_dst

backing=$VMTEST_TMP/backing.img
mk_file "$backing" 16
on_exit "$DST del --all >/dev/null 2>&1"

# snapshot ID: what must not change (kernel state, owner, node, record).
snapshot() {
	printf '%s %s %s %s' "$(dev_field "$1" state)" "$(dev_field "$1" pid)" "$([ -b "/dev/ublkb$1" ] && echo node)" \
		"$(md5sum 2>/dev/null <"/run/dst/ublk$1.json" | cut -c1-8)"
}
# refused ID TEXT: dst recover ID must fail saying TEXT, changing nothing.
refused() {
	_before=$(snapshot "$1")
	_rc=0; timeout 60 "$DST" recover "$1" >"$VMTEST_TMP/out" 2>&1 || _rc=$?
	log "dst recover $1: exit $_rc: $(grep -v '^$' "$VMTEST_TMP/out" | tail -n 1)"
	[ "$_rc" != 0 ] || fail "dst recover $1 succeeded"
	[ "$_rc" != 124 ] || fail "dst recover $1 hung"
	grep -q -- "$2" "$VMTEST_TMP/out" || fail "dst recover $1 does not say '$2': $(cat "$VMTEST_TMP/out")"
	[ "$(grep -c '^/dev/ublkb' "$VMTEST_TMP/out")" = 0 ] || fail "dst recover $1 printed a device path"
	_after=$(snapshot "$1")
	[ "$_before" = "$_after" ] || fail "dst recover $1 changed the device: '$_before' -> '$_after'"
}

# 1. Not recoverable: after SIGKILL the kernel stops the device (I/O fails)
# but keeps it; recover refuses and points to dst del, which removes it.
run_bg n0 "$DST" add file --path "$backing"
dev=$(dev_of n0 20)
id=${dev#/dev/ublkb}
[ "$(dev_field "$id" recoverable)" = false ] || fail "device $id listed as recoverable"
stop_bg n0 KILL 10 || true
wait_state "$id" dead 10 # the kernel stops a non-recoverable device whose daemon died
log "not recoverable, daemon killed: $("$DST" list | tail -n +2)"
refused "$id" "created without --recoverable"
grep -q "dst del $id" "$VMTEST_TMP/out" || fail "the refusal does not suggest dst del $id"
"$DST" del "$id" >/dev/null || fail "dst del $id failed"
wait_for_gone "/dev/ublkc$id" 10
log "dst del removed the non-recoverable device"

# 2. Live, served by its daemon: refused; the daemon goes on serving.
run_bg r0 "$DST" add file --path "$backing" --recoverable
dev=$(dev_of r0 20)
id=${dev#/dev/ublkb}
refused "$id" "served by a running dst daemon (pid $(bg_pid r0))"
bg_alive r0 || fail "the serving daemon died"
dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none || fail "the device no longer serves I/O"
[ "$(dev_field "$id" state)" = live ] || fail "device $id is $(dev_field "$id" state)"

# 3. Killed, then its state record removed: refused (dst cannot know what
# to serve).
stop_bg r0 KILL 10 || true
wait_state "$id" quiesced 10
mv "/run/dst/ublk$id.json" "$VMTEST_TMP/record.json"
refused "$id" "has no state record"

# 4. A record that does not match the device (2 queues, it has 1).
jq '.queues = 2' "$VMTEST_TMP/record.json" >"/run/dst/ublk$id.json"
refused "$id" "does not match"
grep -q "queues: record 2, device 1" "$VMTEST_TMP/out" || fail "the refusal does not say what differs: $(cat "$VMTEST_TMP/out")"

# 5. The right record back: the same device recovers; its data reads.
cp "$VMTEST_TMP/record.json" "/run/dst/ublk$id.json"
run_bg r1 "$DST" recover "$id"
[ "$(dev_of r1 30)" = "$dev" ] || fail "dst recover did not serve $dev again"
dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none || fail "the recovered device does not serve I/O"
log "with its record back the device recovers: $(recover_times r1)"
stop_bg r1 TERM 30 || fail "dst recover did not exit cleanly on SIGTERM"
wait_for_gone "$dev" 10

# 6. No such device; and a usage error.
refused 77 "no such device"
rc=0; "$DST" recover >"$VMTEST_TMP/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "dst recover without an id: exit $rc, want 2"
log "refusals: not recoverable, live, no record, mismatched record, no device: all clear, nothing changed"
