# vmtest/scenarios/5-recover-lib.sh - helpers of the 5x-recover scenarios.
# Sourced after /tests/lib.sh, never run by itself: keep it non-executable
# (run-all.sh runs only executable scenarios).

now() { awk '{print $1}' /proc/uptime; }
# secs A B: B - A, in seconds with two decimals.
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# dev_of NAME [T=30]: the device path dst NAME printed as its first stdout
# line (run_bg puts stdout and stderr in NAME.log).
dev_of() {
	_i=0
	until _d=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/$1.log") && [ -b "$_d" ]; do
		if ! bg_alive "$1"; then
			echo "ERROR: dst $1 exited without a device: $(tail -n 3 "$VMTEST_TMP/$1.log")" >&2
			return 1
		fi
		_i=$((_i + 1))
		if [ "$_i" -gt $((${2:-30} * 20)) ]; then
			echo "ERROR: no device from dst $1 within ${2:-30}s" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "$_d"
}

# dev_field ID FIELD: a field of device ID in `dst list --json`.
dev_field() {
	"$DST" list --json | jq -r --argjson id "$1" --arg f "$2" '.[] | select(.id == $id) | .[$f]'
}

# wait_state ID STATE [T=10]: until dst list shows device ID in STATE.
wait_state() {
	_i=0
	while [ "$(dev_field "$1" state)" != "$2" ]; do
		_i=$((_i + 1))
		if [ "$_i" -gt $((${3:-10} * 10)) ]; then
			echo "ERROR: device $1 is $(dev_field "$1" state), not $2, after ${3:-10}s" >&2
			return 1
		fi
		sleep 0.1
	done
}

# probe_start DEV: a daemon that reads one 4 KiB block of DEV with O_DIRECT
# every 50 ms and appends the uptime after each completed read to
# probe.log. While the device is quiesced its read waits, so the first
# line after a kill is the moment I/O flows again.
probe_start() {
	: >"$VMTEST_TMP/probe.log"
	# shellcheck disable=SC2016 # expanded by the inner shell
	run_bg probe sh -c 'i=0; while :; do
		dd if="$0" of=/dev/null bs=4k count=1 skip=$((i % 64)) iflag=direct status=none || exit 1
		awk "{print \$1}" /proc/uptime >>"$1"; i=$((i + 1)); sleep 0.05; done' "$1" "$VMTEST_TMP/probe.log"
}

# flow_after T [TIMEOUT=20]: the first probe completion after uptime T.
flow_after() {
	_i=0
	until _f=$(awk -v t="$1" '$1 > t {print $1; exit}' "$VMTEST_TMP/probe.log") && [ -n "$_f" ]; do
		_i=$((_i + 1))
		if [ "$_i" -gt $((${2:-20} * 20)) ]; then
			echo "ERROR: no read completed within ${2:-20}s after $1" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "$_f"
}

# recover_times NAME: what dst NAME (a dst recover) logged about itself.
recover_times() {
	grep -m 1 'device recovered' "$VMTEST_TMP/$1.log" |
		sed -n 's/.*"waited_for_release": "\([^"]*\)".*"start_to_end_recovery": "\([^"]*\)".*"took": "\([^"]*\)".*/release wait \1, START..END_USER_RECOVERY \2, dst recover total \3/p'
}

# fio_bg N DEV SIZE [fio args]: fio write + crc32c verify in the
# background, depth 16; its pid goes to fio-N.pid, its report to fio-N.json.
fio_bg() {
	_n=$1 _dev=$2 _size=$3; shift 3
	fio --name=recover"$_n" --filename="$_dev" --ioengine="$(fio_engine)" --direct=1 --rw=randwrite \
		--bs=4k --iodepth=16 --size="$_size" --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--verify_state_save=0 --randrepeat=0 --output-format=json --output="$VMTEST_TMP/fio-$_n.json" \
		"$@" >"$VMTEST_TMP/fio-$_n.err" 2>&1 &
	echo $! >"$VMTEST_TMP/fio-$_n.pid"
}

# fio_check N: wait for fio run N; it must exit 0 with no error.
fio_check() {
	_p=$(cat "$VMTEST_TMP/fio-$1.pid")
	if ! wait "$_p"; then
		tail -n 5 "$VMTEST_TMP/fio-$1.err" >&2
		echo "ERROR: fio run $1 failed: $(grep -v '^$' "$VMTEST_TMP/fio-$1.err" | tail -n 1)" >&2
		return 1
	fi
	_e=$(jq '.jobs[0].error' "$VMTEST_TMP/fio-$1.json")
	if [ "$_e" != 0 ]; then
		echo "ERROR: fio run $1 reported error $_e" >&2
		return 1
	fi
	log "fio run $1: $(jq -r '.jobs[0] | "wrote \(.write.io_bytes/1048576|floor) MiB, verified \(.read.io_bytes/1048576|floor) MiB, errors \(.error)"' "$VMTEST_TMP/fio-$1.json")"
}

# timing_summary: min/mean/max of the measured times of all rounds.
timing_summary() {
	awk '{for (i = 4; i <= NF; i++) {split($i, kv, "="); v = kv[2] + 0; n[kv[1]]++; s[kv[1]] += v
		if (n[kv[1]] == 1 || v < lo[kv[1]]) lo[kv[1]] = v; if (v > hi[kv[1]]) hi[kv[1]] = v}}
		END {for (k in n) printf "%s min %.2f mean %.2f max %.2f s (%d rounds); ", k, lo[k], s[k] / n[k], hi[k], n[k]}' "$VMTEST_TMP/timings"
}

# kill_recover_rounds ID ROUNDS DELAY SIZE DEV: ROUNDS times, while fio
# (restarted whenever a run has finished) writes and verifies: SIGKILL the
# daemon serving device ID (bg name in $served), wait DELAY s, start
# `dst recover ID` as the next daemon; report kill -> I/O flowing again.
kill_recover_rounds() {
	_id=$1 _rounds=$2 _delay=$3 _size=$4 _dev=$5
	_run=1
	fio_bg "$_run" "$_dev" "$_size"
	_r=1
	while [ "$_r" -le "$_rounds" ]; do
		sleep 1
		if ! kill -0 "$(cat "$VMTEST_TMP/fio-$_run.pid")" 2>/dev/null; then
			fio_check "$_run"
			_run=$((_run + 1))
			fio_bg "$_run" "$_dev" "$_size"
			sleep 1
		fi
		_tk=$(now)
		stop_bg "$served" KILL 10 || true
		sleep "$_delay"
		# One dst list (about 0.4 s under emulation): the device as the
		# next daemon finds it.
		_st=$("$DST" list --json | jq -c --argjson id "$_id" '.[] | select(.id == $id) | {state, pid, running}')
		_tr=$(now)
		run_bg "rec$_r" "$DST" recover "$_id"
		served=rec$_r
		_d=$(dev_of "$served" 30)
		[ "$_d" = "$_dev" ] || fail "dst recover printed $_d, want $_dev"
		_tf=$(flow_after "$_tr")
		log "round $_r: killed $_tk; device at recover: $_st; kill -> I/O flowing $(secs "$_tk" "$_tf") s (dst recover started $(secs "$_tk" "$_tr") s after the kill; recover start -> I/O $(secs "$_tr" "$_tf") s; $(recover_times "$served"))"
		echo "RECOVER $VMTEST_NAME round=$_r kill_to_io=$(secs "$_tk" "$_tf") recover_to_io=$(secs "$_tr" "$_tf")" >>"$VMTEST_TMP/timings"
		[ "$(dev_field "$_id" state)" = live ] || fail "device $_id is $(dev_field "$_id" state) after dst recover"
		_r=$((_r + 1))
	done
	fio_check "$_run"
}
