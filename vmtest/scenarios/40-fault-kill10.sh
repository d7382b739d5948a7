#!/bin/sh
# fio crc32c verify (4k random and 64k sequential writes, depth 16) on a
# remote device while the exporter is SIGKILLed and restarted 10 times at
# random moments (seeded: FAULT_SEED). Every fio run must exit 0 with zero
# verify errors, and the client log must show the reconnects. Prints per
# kill the failover time: exporter up again -> I/O flowing (a 4 KiB read
# probe every 50 ms). Supersedes the two-kill 32-remote-restart.
# timeout: 240
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
# shellcheck source=4-fault-lib.sh
. /tests/scenarios/4-fault-lib.sh
need_dst
fault_init 64
start_exporter exp0
run_bg att "$DST" attach --timeout 2s --retries 15 --ping 1s dst://127.0.0.1:10811/disk
dev=$(dev_of att)
probe_start "$dev"

# fio runs alternate: 4k random (24 MiB), 64k sequential (48 MiB); a new
# run starts whenever the previous one has finished and checked out.
run=0
next_fio() {
	run=$((run + 1))
	if [ $((run % 2)) = 1 ]; then
		fio_bg "$run" "$dev" 24M
	else
		fio_bg "$run" "$dev" 48M --rw=write --bs=64k
	fi
}
fio_done() { ! kill -0 "$(cat "$VMTEST_TMP/fio-$run.pid")" 2>/dev/null; }
next_fio
: >"$VMTEST_TMP/timings"
exp=exp0
for r in 1 2 3 4 5 6 7 8 9 10; do
	sleep "$(rand_in 1 3 "$r")"
	if fio_done; then fio_check "$run"; next_fio; sleep 0.5; fi
	stop_bg "$exp" KILL 5 || true
	t_kill=$(now)
	sleep "$(rand_in 0.2 1.5 $((r + 100)))"
	exp=exp$r
	start_exporter "$exp"
	t_up=$(now)
	t_flow=$(flow_after "$t_up" 30)
	echo "round $r kill: down=$(secs "$t_kill" "$t_up") failover=$(secs "$t_up" "$t_flow")" >>"$VMTEST_TMP/timings"
	log "round $r: killed at $t_kill, exporter up at $t_up, I/O flowing at $t_flow"
done
fio_check "$run"
[ "$run" -ge 2 ] || { next_fio; fio_check "$run"; }
stop_bg probe TERM 5 || true
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
stop_bg "$exp" TERM 30 || true
lost=$(grep -c 'connection lost' "$VMTEST_TMP/att.log" || true)
conns=$(grep -c '"resumed"' "$VMTEST_TMP/att.log" || true)
[ "$lost" -ge 10 ] || fail "the client log shows $lost lost connections for 10 kills"
report "10 exporter SIGKILLs under fio verify: $run fio runs, zero errors; client log: $lost connections lost, $conns connected; $(attach_stats att)"
report "exporter down (kill -> listening again) and failover (listening -> I/O flowing): $(timing_summary)"
