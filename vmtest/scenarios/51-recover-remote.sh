#!/bin/sh
# A recoverable remote device (dst attach --recoverable, 2 queues) outlives
# its daemon: fio writes and verifies (crc32c, depth 16) while the attach
# daemon (not the exporter) is SIGKILLed 5 times; each time `dst recover ID`
# takes over about 1.5 s later, resuming the queues' sessions, and fio must end
# with zero errors. Prints, per kill, the time until I/O flows again.
# timeout: 180
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
need_dst

backing=$VMTEST_TMP/export.img
mk_file "$backing" 48
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	bg_alive exp || fail "exporter exited: $(tail -n 2 "$VMTEST_TMP/exp.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
on_exit "$DST del --all >/dev/null 2>&1"
run_bg a0 "$DST" attach --recoverable -q 2 --timeout 2s --retries 15 --ping 1s dst://127.0.0.1:10811/disk
served=a0
dev=$(dev_of a0 30)
id=${dev#/dev/ublkb}
rec=/run/dst/ublk$id.json
[ "$(stat -c %a "$rec")" = 600 ] || fail "state record $rec has mode $(stat -c %a "$rec"), want 600"
# Queue 1 connects in the background: wait for both session tokens.
i=0
until [ "$(jq '[.remote.sessions[]? | select(. != "")] | length' "$rec")" = "$(jq .queues "$rec")" ]; do
	i=$((i + 1)); [ $i -le 200 ] || fail "the record has not every queue's session: $(jq -c .remote "$rec" | sed 's/[0-9a-f]\{24\}"/…"/g')"
	sleep 0.05
done
log "device $dev: $(jq -c '{kind, url, queues, depth, recoverable, epoch, remote: (.remote | .sessions |= map(.[0:8] + "…"))}' "$rec")"

probe_start "$dev"
kill_recover_rounds "$id" 5 1 24M "$dev"

bg_alive probe || fail "the reader saw an I/O error: $(tail -n 2 "$VMTEST_TMP/probe.log")"
bg_alive exp || fail "the exporter died"
[ "$(jq .epoch "$rec")" = 5 ] || fail "record epoch $(jq .epoch "$rec") after 5 recoveries, want 5"
n=$(cat "$VMTEST_TMP"/rec*.log | grep -c "not resumed\|no longer holds the session" || true)
[ "$n" = 0 ] || fail "$n sessions were not resumed: $(grep -h "not resumed\|no longer holds" "$VMTEST_TMP"/rec*.log | head -n 2)"
report "timings: $(timing_summary)"
stop_bg probe TERM 5 || true
stop_bg "$served" TERM 30 || fail "the last dst recover did not exit cleanly on SIGTERM"
wait_for_gone "$dev" 10
stop_bg exp TERM 30 || true
log "5 kills of the attach daemon and recoveries under fio verify: zero errors, sessions resumed"
