#!/bin/sh
# Retries exhausted: with the exporter killed for good, fio (4k random
# writes, depth 16) gets EIO within timeout x (retries+1) plus one ping
# interval of the kill (measured and printed); `dst del` then removes the
# device while its daemon still runs, the daemon exits, and no process is
# left in D state.
# timeout: 180
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
# shellcheck source=4-fault-lib.sh
. /tests/scenarios/4-fault-lib.sh
need_dst

timeout_s=1 retries=2 ping_s=0.5
bound=$(awk -v t="$timeout_s" -v r="$retries" -v p="$ping_s" 'BEGIN {printf "%.1f", t * (r + 1) + p}')
backing=$VMTEST_TMP/export.img
mk_file "$backing" 32
start_exporter exp
run_bg att "$DST" attach --timeout "${timeout_s}s" --retries "$retries" --ping "${ping_s}s" dst://127.0.0.1:10811/disk
dev=$(dev_of att)
id=${dev#/dev/ublkb}
dd if=/dev/urandom of="$dev" bs=4k count=8 oflag=direct status=none || fail "write before the kill failed"

fio --name=eio --filename="$dev" --ioengine="$(fio_engine)" --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
	--size=16M --time_based --runtime=120 --output-format=json --output="$VMTEST_TMP/fio.json" \
	>"$VMTEST_TMP/fio.err" 2>&1 &
fio_pid=$!
sleep 2
kill -0 "$fio_pid" 2>/dev/null || fail "fio ended before the kill: $(tail -n 3 "$VMTEST_TMP/fio.err")"
t_kill=$(now)
stop_bg exp KILL 5 || true
fio_rc=0
wait "$fio_pid" || fio_rc=$?
took=$(secs "$t_kill" "$(now)")
# When the block layer saw the first EIO (dmesg and /proc/uptime count
# from boot alike), apart from fio's own exit.
t_eio=$(dmesg | sed -n 's/^\[ *\([0-9.]*\)\] I\/O error, dev ublkb.*/\1/p' | awk -v k="$t_kill" '$1 >= k {print; exit}')
[ "$fio_rc" != 0 ] || fail "fio succeeded with the exporter gone"
err=$(jq '.jobs[0].error' "$VMTEST_TMP/fio.json" 2>/dev/null || echo "?")
if [ "$err" != 5 ] && ! grep -qi 'input/output error' "$VMTEST_TMP/fio.err"; then
	fail "fio failed (exit $fio_rc, error $err), but not with EIO: $(tail -n 2 "$VMTEST_TMP/fio.err")"
fi
eio_at="? (no I/O error line in dmesg)"
[ -z "$t_eio" ] || eio_at="$(secs "$t_kill" "$t_eio")s"
report "failure detection: first EIO at the block layer ${eio_at} after the exporter was killed, fio exited with EIO after ${took}s (bound: timeout ${timeout_s}s x (retries $retries + 1) + ping ${ping_s}s = ${bound}s)"
# The bound, plus slack for the emulated guest (and fio's own exit): the
# engine counts time in ticks of its own goroutine, which a loaded TCG
# guest runs late (measured: 3.1 s idle, 4.3 s with another guest running).
[ -z "$t_eio" ] || awk -v t="${eio_at%s}" -v b="$bound" 'BEGIN {exit !(t <= b + 1.5)}' ||
	fail "the first EIO came ${eio_at} after the kill, bound ${bound}s (+1.5s slack)"
awk -v t="$took" -v b="$bound" 'BEGIN {exit !(t <= b + 3)}' || fail "fio's EIO took ${took}s, bound ${bound}s (+3s slack)"

t0=$(now)
"$DST" del "$id" || fail "dst del $id failed with the exporter gone"
wait_for_gone "$dev" 10
i=0
while bg_alive att; do
	[ "$(awk '{print $3}' "/proc/$(bg_pid att)/stat" 2>/dev/null)" != Z ] || break
	i=$((i + 1)); [ $i -le 100 ] || fail "dst attach still runs 10s after dst del"; sleep 0.1
done
report "dst del removed the device in $(secs "$t0" "$(now)")s with the exporter gone; the attach daemon exited"
[ "$("$DST" list --json | jq length)" = 0 ] || fail "dst list is not empty"
no_d_state
log "no process in D state"
