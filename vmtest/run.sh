#!/usr/bin/env bash
# vmtest/run.sh - run the guest-VM tests (or benchmarks) in a qemu guest.
#
# Usage: vmtest/run.sh [--mode test|bench] [--tests REGEX] [--extra FILE[:GUESTPATH]...]...
#                      [--scenarios DIR] [--bench DIR] [--env NAME=VALUE]...
#                      [--verbose] [--no-setup]
#   --mode      test: run vmtest/scenarios/*.sh (default); bench: vmtest/bench/*.sh
#               and extract the results to vmtest/out/bench.txt + bench.md
#   --tests     extended regex on scenario names (no spaces), default all
#   --extra     extra file for the guest (default /usr/local/bin/<name>);
#               bin/dst is added automatically when it exists
#   --scenarios / --bench  use another scenario / bench directory
#   --env       export NAME=VALUE to the scenarios (guest side)
#   --verbose   show the whole console, not just the VMTEST lines
#   --no-setup  skip vmtest/setup.sh
#
# Env: ACCEL (tcg|kvm, default tcg), VM_MEM (2G), VM_SMP (2),
#      VM_CPU (qemu -cpu; default max for tcg, host for kvm),
#      VM_TIMEOUT (1800 s, whole VM run; the guest watchdog fires 15 s
#      earlier, or at VM_GUEST_TIMEOUT), DST_VM_CACHE (<repo>/.cache/vm),
#      BENCH_RUNTIME (8 s per bench job), VMTEST_OUT (vmtest/out),
#      BENCH_JOBS, BENCH_SIZE, FIO_VERIFY_SIZE (passed on to the guest),
#      VM_BOOT_RETRIES (2: boots retried after a kernel panic before /init),
#      VM_APPEND (extra kernel command line, e.g. "loglevel=7").
# Exit status: 0 only if the guest printed "VMTEST SUMMARY" with fail=0 and
# at least one pass.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export DST_VM_CACHE=${DST_VM_CACHE:-$REPO/.cache/vm}
OUTDIR=${VMTEST_OUT:-$HERE/out}
ACCEL=${ACCEL:-tcg}
VM_MEM=${VM_MEM:-2G}
VM_SMP=${VM_SMP:-2}
VM_TIMEOUT=${VM_TIMEOUT:-1800}
BENCH_RUNTIME=${BENCH_RUNTIME:-8}

mode=test tests="" verbose=0 setup=1
mkargs=()
while [ $# -gt 0 ]; do
	case $1 in
	--mode) mode=$2; shift 2 ;;
	--tests) tests=$2; shift 2 ;;
	--extra)
		shift
		[ $# -gt 0 ] || { echo "run.sh: --extra needs a file" >&2; exit 2; }
		while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do mkargs+=(--extra "$1"); shift; done ;;
	--scenarios|--bench|--env) mkargs+=("$1" "$2"); shift 2 ;;
	--verbose) verbose=1; shift ;;
	--no-setup) setup=0; shift ;;
	-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case $mode in test|bench) ;; *) echo "run.sh: --mode must be test or bench" >&2; exit 2 ;; esac
case $tests in *[[:space:]]*) echo "run.sh: --tests pattern must not contain spaces" >&2; exit 2 ;; esac

say() { echo "run.sh: $*" >&2; }
die() { echo "run.sh: ERROR: $*" >&2; exit 1; }
t_now() { date +%s.%N; }
t_since() { awk -v a="$1" -v b="$(t_now)" 'BEGIN {printf "%.1f", b - a}'; }

mkdir -p "$OUTDIR"
# One VM run at a time per output dir: runs share console.log and, on a
# 2-CPU machine, would slow each other into timeouts anyway.
exec 9>>"$OUTDIR/.lock"
if ! flock -n 9; then
	say "waiting for another vmtest run using $OUTDIR to finish"
	flock 9
fi

t0=$(t_now)
if [ "$setup" = 1 ]; then "$HERE/setup.sh"; fi
t_setup=$(t_since "$t0")

[ ! -x "$REPO/bin/dst" ] || mkargs+=(--extra "$REPO/bin/dst")
# the start script of dst-attach@.service (scenario 54)
[ ! -x "$REPO/dist/systemd/dst-attach-unit" ] || mkargs+=(--extra "$REPO/dist/systemd/dst-attach-unit")
t1=$(t_now)
initrd=$(mktemp "$DST_VM_CACHE/initramfs.XXXXXX.cpio")
fifo=$(mktemp -u "${TMPDIR:-/tmp}/vmtest-console.XXXXXX")
qpid=""
cleanup() {
	[ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true
	rm -f "$fifo" "$initrd"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# images of runs that were killed -9
find "$DST_VM_CACHE" -maxdepth 1 -name 'initramfs.*.cpio' -mmin +180 -delete 2>/dev/null || true
guest_env=(--env "BENCH_RUNTIME=$BENCH_RUNTIME")
for v in BENCH_JOBS BENCH_SIZE FIO_VERIFY_SIZE; do
	[ -z "${!v:-}" ] || guest_env+=(--env "$v=${!v}")
done
"$HERE/mkinitramfs.sh" -o "$initrd" "${guest_env[@]}" "${mkargs[@]}" >/dev/null
t_initrd=$(t_since "$t1")

case $ACCEL in
kvm) cpu=${VM_CPU:-host} ;;
tcg) cpu=${VM_CPU:-max} ;;
*) die "ACCEL must be tcg or kvm" ;;
esac
# The guest watchdog fires a bit before the host timeout so the guest can
# still report which scenario hung.
gtimeout=${VM_GUEST_TIMEOUT:-$((VM_TIMEOUT > 30 ? VM_TIMEOUT - 15 : VM_TIMEOUT))}
# maxcpus=1: boot on one CPU, /init onlines the others. Under multi-threaded
# TCG, the kernel patching its own code (static keys) while the other vCPU
# runs it can oops ("Oops: int3"); most such flips happen during boot.
# noreplace-smp + lpj=: onlining the CPU later then costs 0.3 s instead of
# 2.5 s (no patching of every lock prefix back in, no delay-loop
# calibration, which fails under TCG anyway; udelay uses the TSC).
# tsc=reliable: no clocksource watchdog flipping the TSC to unstable (and
# patching sched_clock) when the host is busy.
append="console=ttyS0 panic=-1 loglevel=4 rdinit=/init maxcpus=1 noreplace-smp lpj=10000000 tsc=reliable dst.mode=$mode dst.timeout=$gtimeout dst.verbose=$verbose"
[ -z "$tests" ] || append="$append dst.tests=$tests"
[ -z "${VM_APPEND:-}" ] || append="$append $VM_APPEND"

log=$OUTDIR/console.log
rm -f "$OUTDIR"/console.boot-panic.*.log
say "booting $(basename "$initrd") ($(du -m "$initrd" | cut -f1) MiB), accel=$ACCEL mem=$VM_MEM smp=$VM_SMP timeout=${VM_TIMEOUT}s mode=$mode${tests:+ tests=$tests}"
boot_vm() { # sets rc, t_init, kvm_err, t_vm; console in $log
	: >"$log"
	rm -f "$fifo"; mkfifo "$fifo"
	t2=$(t_now)
	timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 \
		-accel "$ACCEL" -cpu "$cpu" -m "$VM_MEM" -smp "$VM_SMP" \
		-nodefaults -no-user-config -display none -monitor none -no-reboot \
		-serial stdio -kernel "$DST_VM_CACHE/vmlinuz" -initrd "$initrd" \
		-append "$append" </dev/null >"$fifo" 2>&1 &
	qpid=$!
	t_init="" kvm_err=0
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%$'\r'}
		printf '%s\n' "$line" >>"$log"
		case $line in
		VMTEST-INIT*) t_init=$(t_since "$t2") ;;
		esac
		if [ "$verbose" = 1 ]; then
			printf '%s\n' "$line"
		else
			case $line in
			VMTEST*|BENCH*|*"Kernel panic"*|*"KVM internal error"*|qemu*|"vmtest: RUN "*) printf '%s\n' "$line" ;;
			esac
		fi
		case $line in
		*"KVM internal error"*)
			# qemu pauses instead of exiting on this error: stop it now.
			kvm_err=1; kill "$qpid" 2>/dev/null || true ;;
		esac
	done <"$fifo"
	rc=0; wait "$qpid" || rc=$?
	t_vm=$(t_since "$t2")
}
# A kernel panic before /init ran is not a test result: under TCG the guest
# kernel very rarely oopses while it patches its own code at boot (seen
# once, on a heavily loaded host). Boot again, up to VM_BOOT_RETRIES times.
tries=0
while :; do
	boot_vm
	if [ -z "$t_init" ] && [ "$kvm_err" = 0 ] && grep -aq 'Kernel panic' "$log" \
		&& [ "$tries" -lt "${VM_BOOT_RETRIES:-2}" ]; then
		tries=$((tries + 1))
		cp "$log" "$OUTDIR/console.boot-panic.$tries.log"
		say "guest kernel panicked before /init ($(grep -a -m1 'Kernel panic' "$log")); booting again (saved $OUTDIR/console.boot-panic.$tries.log)"
		continue
	fi
	break
done
say "timings: setup ${t_setup}s, initramfs ${t_initrd}s, boot to /init ${t_init:-?}s, VM total ${t_vm}s (console: $log)"

summary=$(grep -a '^VMTEST SUMMARY ' "$log" | tail -n 1 || true)
problem=""
if [ "$kvm_err" = 1 ]; then
	problem="KVM internal error: this host cannot run the guest under KVM; use ACCEL=tcg"
elif grep -aq 'Kernel panic' "$log"; then
	problem="guest kernel panic: $(grep -a 'Kernel panic' "$log" | head -n 1)"
elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	last=$(grep -a '^vmtest: RUN ' "$log" | tail -n 1 | sed 's/^vmtest: RUN //')
	problem="VM timed out after ${VM_TIMEOUT}s${last:+ (last scenario started: $last)}"
elif grep -aq '^VMTEST-WATCHDOG' "$log"; then
	last=$(grep -a '^vmtest: RUN ' "$log" | tail -n 1 | sed 's/^vmtest: RUN //')
	problem="guest watchdog fired after ${gtimeout}s${last:+ (last scenario started: $last)}"
elif [ -z "$summary" ]; then
	qerr=$(grep -a '^qemu' "$log" | head -n 2 | paste -sd' ' || true)
	problem="no VMTEST SUMMARY line from the guest (qemu exit $rc)${qerr:+: $qerr}; see $log"
fi
if [ -n "$problem" ] && [ "$ACCEL" = kvm ] && [ "$kvm_err" = 0 ]; then
	problem="$problem (ACCEL=kvm: on hosts whose KVM cannot run a stock kernel, use ACCEL=tcg)"
fi

if [ "$mode" = bench ]; then
	sed -n '/^VMTEST-RESULTS-BEGIN/,/^VMTEST-RESULTS-END/p' "$log" | tr -d '\r' \
		| grep -a -E '^BENCH(BASE)? ' >"$OUTDIR/bench.txt" || true
	if [ -s "$OUTDIR/bench.txt" ]; then
		"$HERE/bench/table.sh" "$OUTDIR/bench.txt" >"$OUTDIR/bench.md"
		echo
		cat "$OUTDIR/bench.md"
		echo
		say "bench results: $OUTDIR/bench.txt, table: $OUTDIR/bench.md"
	else
		say "no bench results found"
	fi
fi

[ -z "$problem" ] || die "$problem"
pass=$(sed -n 's/.* pass=\([0-9]*\).*/\1/p' <<<"$summary")
fail=$(sed -n 's/.* fail=\([0-9]*\).*/\1/p' <<<"$summary")
if [ "${fail:-1}" -ne 0 ]; then
	die "$fail scenario(s) failed: $(grep -a '^VMTEST FAIL ' "$log" | awk '{print $3}' | paste -sd' ')"
fi
if [ "${pass:-0}" -lt 1 ]; then
	die "no scenario passed${tests:+ (does --tests \"$tests\" match any?)}"
fi
say "OK: $summary"
