#!/bin/sh
# A remote device over loopback inside the guest: `dst export` serves a
# file, `dst attach` makes /dev/ublkbN of it; fio crc32c verify at 4k
# (depth 1 and 32) and 1m over TCP, and shorter runs over IPv6 and a Unix
# socket. dst list shows the URL and the connection state. Metrics: the
# exporter and the TCP device serve Prometheus text (--metrics-listen),
# whose write counters moved after fio, and dst stats ID prints lines.
# timeout: 300
set -eu
. /tests/lib.sh
need_dst

backing=$VMTEST_TMP/export.img
mk_file "$backing" 128
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --listen 'dst://[::1]:10812' \
	--listen "dst+unix://$VMTEST_TMP/dst.sock" --export disk="$backing" --allow 127.0.0.1/32=rw --allow ::1/128=rw \
	--metrics-listen 127.0.0.1:9111
wait_for_file "$VMTEST_TMP/dst.sock" 20 || fail "exporter did not start: $(tail -n 3 "$VMTEST_TMP/exp.log")"

# attach NAME URL [FLAG...]: start dst attach (a child of this shell, so
# stop_bg can collect its exit status) and set dev to its device path.
attach() {
	_name=$1 _url=$2
	shift 2
	run_bg "$_name" "$DST" attach --timeout 5s --retries 6 "$@" "$_url"
	_i=0
	until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/$_name.log") && [ -b "$dev" ]; do
		bg_alive "$_name" || fail "dst attach $_url exited: $(tail -n 2 "$VMTEST_TMP/$_name.log")"
		_i=$((_i + 1)); [ $_i -le 600 ] || fail "dst attach $_url showed no device within 30s"
		sleep 0.05
	done
}

# metric NAME SELECTOR URL: the sum of the series of NAME whose labels
# contain SELECTOR (e.g. op="write") in a scrape of URL.
metric() {
	wget -q -O - "$3" | awk -v n="$1{" -v s="$2" 'index($0, n) == 1 && (s == "" || index($0, s)) { v += $NF } END { print v + 0 }'
}

attach tcp dst://127.0.0.1:10811/disk --metrics-listen 127.0.0.1:9110
[ "$(dev_size "$dev")" = $((128 << 20)) ] || fail "$dev has $(dev_size "$dev") bytes, want 128 MiB"
id=${dev#/dev/ublkb}
"$DST" list --json | jq -e --argjson id "$id" '.[] | select(.id == $id and .url == "dst://127.0.0.1:10811/disk" and .conn == "up")' >/dev/null ||
	fail "dst list does not show $dev with its URL and state up: $("$DST" list)"
log "remote device $dev: $("$DST" list | tail -n +2)"
fio_verify "$dev" 4k 1
# dst stats while fio runs: 4 lines, and some show I/O ($4: read IOPS,
# $9: write IOPS).
"$DST" stats "$id" --count 4 >"$VMTEST_TMP/stats-live.out" 2>&1 &
stats_pid=$!
fio_verify "$dev" 4k 32
wait "$stats_pid" || fail "dst stats $id --count 4 failed: $(cat "$VMTEST_TMP/stats-live.out")"
busy=$(awk '$4 + $9 > 0' "$VMTEST_TMP/stats-live.out" | wc -l)
lines=$(wc -l <"$VMTEST_TMP/stats-live.out")
if [ "$lines" -ne 4 ] || [ "$busy" -lt 1 ]; then
	fail "dst stats during fio: $lines lines, $busy with I/O: $(cat "$VMTEST_TMP/stats-live.out")"
fi
report "dst stats during fio: $(awk '$4 + $9 > 0' "$VMTEST_TMP/stats-live.out" | head -n 1)"
fio_verify "$dev" 1m 8
w=$(metric dst_device_requests_total 'op="write"' http://127.0.0.1:9110/metrics)
wb=$(metric dst_device_bytes_total 'op="write"' http://127.0.0.1:9110/metrics)
tx=$(metric dst_txn_completed_total '' http://127.0.0.1:9110/metrics)
ew=$(metric dst_export_requests_total 'op="write"' http://127.0.0.1:9111/metrics)
report "metrics: device writes $w ($wb bytes), transactions $tx, exporter writes $ew"
for v in "$w" "$wb" "$tx" "$ew"; do
	[ "${v%.*}" -gt 0 ] || fail "write counters did not move: device $w bytes $wb txn $tx exporter $ew"
done
wget -q -O - http://127.0.0.1:9110/metrics | grep -q "^dst_device_request_duration_seconds_bucket{.*op=\"write\"" ||
	fail "no write latency histogram"
"$DST" stats "$id" --count 2 >"$VMTEST_TMP/stats.out" 2>"$VMTEST_TMP/stats.err" ||
	fail "dst stats $id failed: $(cat "$VMTEST_TMP/stats.err")"
[ "$(grep -c "ublkb$id .*IOPS.*conn up" "$VMTEST_TMP/stats.out")" = 2 ] || fail "dst stats $id printed: $(cat "$VMTEST_TMP/stats.out")"
report "dst stats: $(tail -n 1 "$VMTEST_TMP/stats.out")"
stop_bg tcp TERM 30 || fail "dst attach did not exit cleanly after SIGTERM"
wait_for_gone "$dev" 10

attach tcp6 'dst://[::1]:10812/disk'
FIO_VERIFY_SIZE=4M fio_verify "$dev" 4k 16
stop_bg tcp6 TERM 30 || fail "dst attach (IPv6) did not exit cleanly"
wait_for_gone "$dev" 10

attach unix "dst+unix://$VMTEST_TMP/dst.sock?export=disk"
FIO_VERIFY_SIZE=4M fio_verify "$dev" 64k 8
stop_bg unix TERM 30 || fail "dst attach (unix) did not exit cleanly"
wait_for_gone "$dev" 10

stop_bg exp TERM 30 || fail "dst export did not exit cleanly after SIGTERM"
log "remote device over TCP, IPv6 and a Unix socket: OK"
