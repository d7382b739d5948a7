# vmtest/scenarios/4-fault-lib.sh - helpers of the 4x-fault scenarios.
# Sourced after /tests/lib.sh and /tests/scenarios/5-recover-lib.sh (now,
# secs, dev_of, probe_start, flow_after, fio_bg, fio_check), never run by
# itself: keep it non-executable. report() is lib.sh's.

# fault_init SIZE_MIB: the seed of the run's random choices (FAULT_SEED,
# from the clock unless given; printed, so a run can be replayed) and
# $backing, a SIZE_MIB MiB file to export.
fault_init() {
	: "${FAULT_SEED:=$(awk '{printf "%d", $1 * 1000}' /proc/uptime)}"
	log "FAULT_SEED=$FAULT_SEED"
	backing=$VMTEST_TMP/export.img
	mk_file "$backing" "$1"
}

# start_exporter NAME [ARGS...]: dst export of $backing as "disk" on
# 127.0.0.1:10811 (127.0.0.1 read-write), run as daemon NAME; returns once
# it listens.
start_exporter() {
	_n=$1; shift
	run_bg "$_n" "$DST" export --listen dst://127.0.0.1:10811 --export disk="${backing:?}" \
		--allow 127.0.0.1/32=rw "$@"
	_i=0
	until grep -q '^listening ' "$VMTEST_TMP/$_n.log"; do
		if ! bg_alive "$_n"; then
			echo "ERROR: exporter $_n exited: $(tail -n 2 "$VMTEST_TMP/$_n.log")" >&2
			return 1
		fi
		_i=$((_i + 1))
		if [ "$_i" -gt 400 ]; then
			echo "ERROR: exporter $_n did not listen within 20s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# rand_in LO HI N: a pseudo-random number in [LO, HI) with two decimals,
# the N-th of the sequence seeded by $FAULT_SEED (printed by the scenario,
# so a run can be replayed).
rand_in() {
	awk -v lo="$1" -v hi="$2" -v n="$3" -v s="${FAULT_SEED:-1}" \
		'BEGIN {srand(s); for (i = 0; i < n; i++) r = rand(); printf "%.2f", lo + (hi - lo) * r}'
}

# attach_stats NAME: the counters dst attach NAME logged when it detached.
attach_stats() {
	grep -m 1 'detached' "$VMTEST_TMP/$1.log" | grep -o '"[a-z]*": [0-9]*' | tr -d '"' | paste -sd' ' -
}

# no_d_state: fail if any process is in uninterruptible sleep (D).
no_d_state() {
	_d=$(for _s in /proc/[0-9]*/stat; do
		# the state follows the command name, which may hold spaces
		sed -n 's/^\([0-9]*\) (\(.*\)) D .*/\1 \2/p' "$_s" 2>/dev/null
	done)
	if [ -n "$_d" ]; then
		echo "ERROR: processes in D state: $_d" >&2
		return 1
	fi
}
