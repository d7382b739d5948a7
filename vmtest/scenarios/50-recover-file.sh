#!/bin/sh
# A recoverable file device outlives its daemon: fio writes and verifies
# (crc32c, depth 16) while the daemon is SIGKILLed 5 times; each time
# `dst recover ID` takes over about 1.5 s later and fio must end with zero
# errors. Prints, per kill, the time until I/O flows again (a reader that
# reads one block every 50 ms: its first completed read after the kill).
# timeout: 150
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
need_dst

backing=$VMTEST_TMP/backing.img
mk_file "$backing" 64
on_exit "$DST del --all >/dev/null 2>&1"
run_bg d0 "$DST" add file --path "$backing" --recoverable
served=d0
dev=$(dev_of d0 20)
id=${dev#/dev/ublkb}
[ "$(dev_field "$id" recoverable)" = true ] || fail "dst list does not show device $id as recoverable"
rec=/run/dst/ublk$id.json
[ "$(stat -c %a "$rec")" = 600 ] || fail "state record $rec has mode $(stat -c %a "$rec"), want 600"
log "device $dev: $(jq -c '{kind, path, queues, depth, max_io, recoverable, epoch}' "$rec")"

probe_start "$dev"
kill_recover_rounds "$id" 5 1 32M "$dev"

bg_alive probe || fail "the reader saw an I/O error: $(tail -n 2 "$VMTEST_TMP/probe.log")"
epoch=$(jq .epoch "$rec")
[ "$epoch" = 5 ] || fail "record epoch $epoch after 5 recoveries, want 5"
[ "$(jq .pid "$rec")" = "$(bg_pid "$served")" ] || fail "record pid $(jq .pid "$rec") is not the serving daemon's $(bg_pid "$served")"
report "timings: $(timing_summary)"
stop_bg probe TERM 5 || true
stop_bg "$served" TERM 30 || fail "the last dst recover did not exit cleanly on SIGTERM"
wait_for_gone "$dev" 10
[ ! -e "$rec" ] || fail "state record left after SIGTERM"
log "5 kills and recoveries under fio verify: zero errors"
