#!/bin/sh
# vmtest/run-all.sh - guest test runner (installed as /tests/run-all.sh).
#
# Runs every executable *.sh in /tests/scenarios (VMTEST_MODE=test) or
# /tests/bench (VMTEST_MODE=bench; lib.sh and table.sh excluded), sorted,
# whose name (without .sh) matches the extended regex VMTEST_TESTS (empty:
# all). Each runs in its own session under a watchdog: default 120 s,
# overridable by a "# timeout: N" line in the script. Prints one line per
# scenario:
#   VMTEST PASS <name> <seconds>s
#   VMTEST FAIL <name> <seconds>s: <last ERROR: line, or last output line>
#   VMTEST SKIP <name>: <reason>          (the scenario exited 77)
# then, on failure, the scenario's log tail as "VMTEST-LOG <name>| ..." lines,
# then (bench mode) the result lines between VMTEST-RESULTS-BEGIN/-END, and
# finally "VMTEST SUMMARY pass=N fail=N skip=N". Exit status 1 if any failed.

# shellcheck disable=SC1091
[ ! -f /tests/vmtest.env ] || . /tests/vmtest.env
mode=${VMTEST_MODE:-test}
pattern=${VMTEST_TESTS:-}
deftimeout=${VMTEST_DEFAULT_TIMEOUT:-120}
case $mode in
test) dir=/tests/scenarios ;;
bench) dir=/tests/bench ;;
*) echo "VMTEST FAIL run-all 0s: unknown mode '$mode'"; echo "VMTEST SUMMARY pass=0 fail=1 skip=0"; exit 1 ;;
esac

export VMTEST_MODE="$mode"
export VMTEST_RESULTS=/tmp/vmtest/results.txt
export DST=/usr/local/bin/dst
export BENCH_RUNTIME="${BENCH_RUNTIME:-8}"
mkdir -p /tmp/vmtest
: >"$VMTEST_RESULTS"

now() { awk '{print $1}' /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

npass=0 nfail=0 nskip=0
# shellcheck disable=SC2012  # our own file names, no spaces
for f in $(ls "$dir"/*.sh 2>/dev/null | LC_ALL=C sort); do
	name=$(basename "$f" .sh)
	[ -x "$f" ] || continue
	if [ "$mode" = bench ]; then case $name in lib|table) continue ;; esac; fi
	if [ -n "$pattern" ] && ! echo "$name" | grep -Eq -- "$pattern"; then continue; fi

	t=$(sed -n 's/^#[[:space:]]*timeout:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$f" | head -n 1)
	t=${t:-$deftimeout}
	# bench timeouts are written for BENCH_RUNTIME=8; scale them for longer runs
	if [ "$mode" = bench ] && [ "$BENCH_RUNTIME" -gt 8 ] 2>/dev/null; then
		t=$((t * BENCH_RUNTIME / 8))
	fi
	log=/tmp/vmtest/$name.log
	export VMTEST_NAME="$name" VMTEST_LOG="$log" VMTEST_TMP="/tmp/vmtest/$name"
	rm -rf "$VMTEST_TMP"; mkdir -p "$VMTEST_TMP"
	flag=/tmp/vmtest/.timeout.$name
	rm -f "$flag"
	echo "vmtest: RUN $name (timeout ${t}s)"
	start=$(now)
	dmesg_lines=$(dmesg 2>/dev/null | wc -l)
	# Own session/process group, so the watchdog and the cleanup below
	# reach every process the scenario started.
	if [ "${VMTEST_VERBOSE:-0}" = 1 ]; then
		# shellcheck disable=SC2016  # expanded by the inner shell
		( cd "$VMTEST_TMP" && exec setsid busybox sh -c \
			'set -o pipefail; "$0" 2>&1 </dev/null | tee "$1" | sed "s/^/  $2: /"' \
			"$f" "$log" "$name" ) &
	else
		( cd "$VMTEST_TMP" && exec setsid "$f" >"$log" 2>&1 </dev/null ) &
	fi
	pid=$!   # session and process group leader (setsid did not fork)
	( sleep "$t"; : >"$flag"; kill -TERM "-$pid"; sleep 5; kill -KILL "-$pid" ) 2>/dev/null &
	wd=$!
	wait "$pid"; rc=$?
	kill "$wd" 2>/dev/null
	# anything the scenario left running in its process group goes too
	kill -KILL "-$pid" 2>/dev/null
	secs=$(elapsed "$start")
	# Free the scenario's scratch space now: /tmp is a tmpfs of half the
	# guest's memory, and the backing files of a whole run do not fit in
	# it (a scenario that cannot even create its log fails with no
	# output). Mounts left inside it go first; its log is kept.
	grep -F " $VMTEST_TMP/" /proc/mounts | awk '{print $2}' | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
	rm -rf "$VMTEST_TMP"

	if [ -e "$flag" ]; then
		rc=124
		msg="timed out after ${t}s (last output: $(grep -v -e '^[[:space:]]*$' -e '^Terminated$' "$log" | tail -n 1))"
	elif [ "$rc" -eq 0 ]; then
		npass=$((npass + 1))
		echo "VMTEST PASS $name ${secs}s"
		continue
	elif [ "$rc" -eq 77 ]; then
		nskip=$((nskip + 1))
		reason=$(grep '^SKIP: ' "$log" | tail -n 1 | sed 's/^SKIP: //')
		[ -n "$reason" ] || reason=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)
		echo "VMTEST SKIP $name: ${reason:-exit 77}"
		continue
	else
		msg=$(grep '^ERROR: ' "$log" | tail -n 1 | sed 's/^ERROR: //')
		[ -n "$msg" ] || msg=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)
		msg="${msg:-no output} (exit $rc)"
	fi
	nfail=$((nfail + 1))
	echo "VMTEST FAIL $name ${secs}s: $msg"
	tail -n "${VMTEST_LOG_TAIL:-40}" "$log" | sed "s/^/VMTEST-LOG $name| /"
	# kernel messages logged while the scenario ran (last 20)
	dmesg 2>/dev/null | tail -n "+$((dmesg_lines + 1))" | tail -n 20 | sed "s/^/VMTEST-LOG $name| dmesg: /"
done

if [ "$mode" = bench ]; then
	echo "VMTEST-RESULTS-BEGIN"
	cat "$VMTEST_RESULTS"
	echo "VMTEST-RESULTS-END"
fi
echo "VMTEST SUMMARY pass=$npass fail=$nfail skip=$nskip"
[ "$nfail" -eq 0 ]
