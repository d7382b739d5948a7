#!/bin/sh
# The exporter is killed (SIGKILL) and restarted while fio writes and
# verifies through the remote device: the outage is shorter than
# timeout x (retries+1), so fio must finish with zero errors.
# timeout: 400
set -eu
. /tests/lib.sh
need_dst

backing=$VMTEST_TMP/export.img
mk_file "$backing" 96
start_exporter() {
	run_bg "$1" "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
	_i=0
	until grep -q listening "$VMTEST_TMP/$1.log"; do
		bg_alive "$1" || fail "exporter $1 exited: $(tail -n 2 "$VMTEST_TMP/$1.log")"
		_i=$((_i + 1)); [ $_i -le 400 ] || fail "exporter $1 did not start"; sleep 0.05
	done
}
start_exporter exp1
run_bg att "$DST" attach --timeout 2s --retries 15 --ping 1s dst://127.0.0.1:10811/disk
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/att.log") && [ -b "$dev" ]; do
	i=$((i + 1)); [ $i -le 600 ] || fail "no device within 30s"; sleep 0.05
done

eng=$(fio_engine)
fio --name=restart --filename="$dev" --ioengine="$eng" --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
	--size=48M --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
	--output-format=json --output="$VMTEST_TMP/fio.json" >"$VMTEST_TMP/fio.err" 2>&1 &
fio_pid=$!
sleep 3
for round in 1 2; do
	if [ "$round" = 1 ]; then old=exp1; new=exp2; else old=exp2; new=exp3; fi
	kill -0 "$fio_pid" 2>/dev/null || break
	log "round $round: killing the exporter (SIGKILL)"
	stop_bg "$old" KILL 5 || true
	sleep 2
	start_exporter "$new"
	log "round $round: exporter back; connection: $("$DST" list --json | jq -r '.[0].conn')"
	sleep 4
done
wait "$fio_pid" || { tail -n 20 "$VMTEST_TMP/fio.err"; fail "fio failed across exporter restarts"; }
errors=$(jq '.jobs[0].error' "$VMTEST_TMP/fio.json")
[ "$errors" = 0 ] || fail "fio reported error $errors"
log "fio: $(jq -r '.jobs[0] | "wrote \(.write.io_bytes/1048576|floor) MiB, verified \(.read.io_bytes/1048576|floor) MiB, errors \(.error)"' "$VMTEST_TMP/fio.json")"
grep -c "connected" "$VMTEST_TMP/att.log" | { read -r n; log "client log shows $n connection events"; }
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
stop_bg exp3 TERM 30 || true
log "exporter killed and restarted twice under fio verify: zero errors"
