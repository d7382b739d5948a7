# vmtest/lib.sh - helpers for guest scenarios. Installed as /tests/lib.sh.
# /bin/sh in the guest is dash; busybox applets are on PATH (/bin) after
# the real Debian tools. A scenario starts with:
#
#   #!/bin/sh
#   # timeout: 60            (optional, default 120 s)
#   set -eu
#   . /tests/lib.sh
#
# Conventions: a helper that checks something prints "ERROR: ..." and
# returns 1 on failure (so `set -e` stops the scenario and run-all.sh shows
# that line); `fail` exits 1, `skip` exits 77.
#
# Environment set by run-all.sh for each scenario:
#   VMTEST_NAME     scenario name (file name without .sh)
#   VMTEST_MODE     test | bench
#   VMTEST_TMP      empty per-scenario scratch dir on tmpfs (also the cwd)
#   VMTEST_RESULTS  file collecting result lines (bench mode copies it out)
#   VMTEST_LOG      this scenario's captured output
#   DST             path of the dst binary (/usr/local/bin/dst; may not exist)
#   BENCH_RUNTIME   seconds per bench job (host env, default 8)

: "${VMTEST_NAME:=$(basename "$0" .sh)}"
: "${VMTEST_TMP:=/tmp/vmtest/$VMTEST_NAME}"
: "${VMTEST_RESULTS:=/tmp/vmtest/results.txt}"
: "${DST:=/usr/local/bin/dst}"
mkdir -p "$VMTEST_TMP"
_VMTEST_BG=$VMTEST_TMP/.bg        # lines: NAME PID
_VMTEST_HOOKS=$VMTEST_TMP/.hooks  # on_exit commands, run last-first
: >"$_VMTEST_BG"
: >"$_VMTEST_HOOKS"

log() { echo "[$(awk '{print $1}' /proc/uptime)] $*"; }
# report: log, and show the line on the console as VMTEST-INFO (figures
# that a run reports: timings, counts).
report() {
	log "$*"
	echo "VMTEST-INFO $VMTEST_NAME: $*" >/dev/console 2>/dev/null || true
}
fail() { echo "ERROR: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
need_cmd() { for _c; do command -v "$_c" >/dev/null || skip "$_c not in the guest image"; done; }
need_dst() { [ -x "$DST" ] || skip "no dst binary (build bin/dst first)"; }

# on_exit CMD...: run CMD (one string, eval'd) at scenario exit, last
# registered first, before the background daemons are killed.
on_exit() { printf '%s\n' "$*" >>"$_VMTEST_HOOKS"; }

# run_bg NAME CMD...: start a daemon in the background, output to
# $VMTEST_TMP/NAME.log; its pid is recorded (bg_pid NAME) and it is killed
# at scenario exit (TERM, then KILL after 5 s).
run_bg() {
	_n=$1; shift
	"$@" >"$VMTEST_TMP/$_n.log" 2>&1 </dev/null &
	echo "$_n $!" >>"$_VMTEST_BG"
	log "started $_n (pid $!): $*"
}
bg_pid() { awk -v n="$1" '$1 == n {p = $2} END {if (p == "") exit 1; print p}' "$_VMTEST_BG"; }
bg_alive() { _p=$(bg_pid "$1") && kill -0 "$_p" 2>/dev/null; }
# stop_bg NAME [SIGNAL] [TIMEOUT]: signal the daemon (default TERM) and wait
# up to TIMEOUT s (default 10) for it to exit. Returns the daemon's exit
# status; 124 (with an ERROR line) if it did not exit in time.
stop_bg() {
	_p=$(bg_pid "$1") || { echo "ERROR: stop_bg: no daemon $1" >&2; return 1; }
	kill -"${2:-TERM}" "$_p" 2>/dev/null || true
	_i=0
	while kill -0 "$_p" 2>/dev/null; do
		# a zombie still answers kill -0; it has exited when its state is Z
		[ "$(awk '{print $3}' "/proc/$_p/stat" 2>/dev/null)" != Z ] || break
		_i=$((_i + 1))
		if [ "$_i" -gt $((${3:-10} * 10)) ]; then
			echo "ERROR: $1 (pid $_p) did not exit within ${3:-10}s after SIG${2:-TERM}" >&2
			return 124
		fi
		sleep 0.1
	done
	_rc=0; wait "$_p" 2>/dev/null || _rc=$?
	awk -v n="$1" '$1 != n' "$_VMTEST_BG" >"$_VMTEST_BG.new"; mv "$_VMTEST_BG.new" "$_VMTEST_BG"
	return "$_rc"
}

_vmtest_cleanup() {
	_rc=$?
	trap - EXIT INT TERM
	set +e
	if [ -s "$_VMTEST_HOOKS" ]; then
		sed -n '1!G;h;$p' "$_VMTEST_HOOKS" >"$_VMTEST_HOOKS.rev"
		while IFS= read -r _h; do eval "$_h" </dev/null; done <"$_VMTEST_HOOKS.rev"
	fi
	while read -r _n _p; do
		[ -n "$_p" ] || continue
		if [ "$_rc" -ne 0 ] && [ "$_rc" -ne 77 ] && [ -s "$VMTEST_TMP/$_n.log" ]; then
			echo "--- tail of daemon $_n log:"
			tail -n 15 "$VMTEST_TMP/$_n.log"
		fi
		kill -TERM "$_p" 2>/dev/null
	done <"$_VMTEST_BG"
	_i=0
	while read -r _n _p; do
		while kill -0 "$_p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$_p/stat" 2>/dev/null)" != Z ] && [ $_i -lt 50 ]; do
			sleep 0.1; _i=$((_i + 1))
		done
		kill -KILL "$_p" 2>/dev/null
	done <"$_VMTEST_BG"
	exit "$_rc"
}
trap _vmtest_cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# wait_for_file PATH [TIMEOUT_S=10]: wait until PATH exists.
wait_for_file() {
	_i=0
	while [ ! -e "$1" ]; do
		_i=$((_i + 1))
		if [ "$_i" -gt $((${2:-10} * 20)) ]; then
			echo "ERROR: $1 did not appear within ${2:-10}s" >&2; return 1
		fi
		sleep 0.05
	done
}
# wait_for_gone PATH [TIMEOUT_S=10]: wait until PATH no longer exists.
wait_for_gone() {
	_i=0
	while [ -e "$1" ]; do
		_i=$((_i + 1))
		if [ "$_i" -gt $((${2:-10} * 20)) ]; then
			echo "ERROR: $1 still exists after ${2:-10}s" >&2; return 1
		fi
		sleep 0.05
	done
}

# load_module NAME [PARAM=VALUE...]: modprobe (with dependencies) unless loaded.
load_module() {
	[ ! -d "/sys/module/$(echo "$1" | tr - _)" ] || return 0
	modprobe "$@" || { echo "ERROR: modprobe $* failed" >&2; return 1; }
}

dev_size() { blockdev --getsize64 "$1"; }

# mk_file PATH SIZE_MIB: a file filled with zeroes (allocated, not sparse).
mk_file() { dd if=/dev/zero of="$1" bs=1M count="$2" status=none; }

# mk_loop FILE [direct-io on|off]: attach FILE to a free loop device with
# util-linux losetup (busybox's cannot set direct I/O), echo the device and
# detach it at scenario exit.
mk_loop() {
	_l=$(/usr/sbin/losetup --direct-io="${2:-on}" --show -f "$1") || { echo "ERROR: losetup $1 failed" >&2; return 1; }
	on_exit "/usr/sbin/losetup -d $_l"
	echo "$_l"
}

# fio_engine: io_uring when fio and the kernel have it, else libaio.
fio_engine() {
	if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = 0 ] \
		&& fio --enghelp 2>/dev/null | grep -qw io_uring; then
		echo io_uring
	else
		echo libaio
	fi
}

# fio_verify DEV BS DEPTH [extra fio args...]: write DEV with random
# offsets (crc32c checksummed blocks), read everything back and verify.
# Size: FIO_VERIFY_SIZE (default 16M, capped at the device size; a later
# --size=... in the extra args wins). Prints one
# summary line; on failure prints the fio error and returns 1.
fio_verify() {
	_dev=$1 _bs=$2 _qd=$3; shift 3
	_sz=${FIO_VERIFY_SIZE:-16M}
	case $_sz in
	*[Kk]) _b=$((${_sz%?} * 1024)) ;; *[Mm]) _b=$((${_sz%?} * 1048576)) ;;
	*[Gg]) _b=$((${_sz%?} * 1073741824)) ;; *) _b=$_sz ;;
	esac
	if [ -b "$_dev" ]; then
		_ds=$(dev_size "$_dev")
		[ "$_b" -le "$_ds" ] || _b=$_ds
	fi
	_out=$VMTEST_TMP/fio-verify.$$.json
	_eng=$(fio_engine)
	if ! fio --name=verify --filename="$_dev" --ioengine="$_eng" --direct=1 \
		--rw=randwrite --bs="$_bs" --iodepth="$_qd" --size="$_b" \
		--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
		--randrepeat=0 --output-format=json --output="$_out" "$@" 2>"$_out.err"; then
		tail -n 5 "$_out.err" >&2
		echo "ERROR: fio_verify $_dev bs=$_bs depth=$_qd failed: $(grep -v '^$' "$_out.err" | tail -n 1)" >&2
		return 1
	fi
	jq -r --arg d "$_dev" --arg bs "$_bs" --arg qd "$_qd" --arg e "$_eng" '.jobs[0] |
		"fio_verify \($d) bs=\($bs) depth=\($qd) engine=\($e): OK, \(.write.io_bytes/1048576|floor) MiB written + verified, write \(.write.iops|floor) IOPS, verify-read \(.read.iops|floor) IOPS, errors=\(.error)"' "$_out"
	rm -f "$_out" "$_out.err"
}

# dst_device NAME [TIMEOUT_S=20]: the device path dst NAME printed on
# stdout, once the block device exists; fails at once if dst exited.
dst_device() {
	_i=0
	while :; do
		_d=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/$1.log" 2>/dev/null || true)
		if [ -n "$_d" ] && [ -b "$_d" ]; then echo "$_d"; return 0; fi
		_p=$(bg_pid "$1") || { echo "ERROR: no daemon $1" >&2; return 1; }
		if ! kill -0 "$_p" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$_p/stat" 2>/dev/null)" = Z ]; then
			echo "ERROR: dst ($1) exited before its device appeared: $(grep -v '^$' "$VMTEST_TMP/$1.log" | tail -n 1)" >&2
			return 1
		fi
		_i=$((_i + 1))
		[ "$_i" -le $((${2:-20} * 20)) ] || { echo "ERROR: dst ($1) showed no device within ${2:-20}s" >&2; return 1; }
		sleep 0.05
	done
}
