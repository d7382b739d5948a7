#!/bin/sh
# dst file device life cycle: the first stdout line is the device path;
# SIGTERM removes the device; after kill -9 of the daemon, `dst del ID`
# removes what is left; `dst del` of an unknown id fails clearly; and bad
# command lines fail before any device is created.
# timeout: 120
set -eu
. /tests/lib.sh
need_dst

# ublk_nodes: the ublk device nodes in /dev.
ublk_nodes() {
	for _f in /dev/ublkb[0-9]* /dev/ublkc[0-9]*; do
		[ ! -e "$_f" ] || printf '%s ' "${_f#/dev/}"
	done
}
# no_devices WHAT: nothing is left: no ublk nodes, dst list empty.
no_devices() {
	_n=$(ublk_nodes)
	[ -z "$_n" ] || fail "$1: ublk nodes left: $_n"
	_l=$("$DST" list --json) || fail "$1: dst list failed"
	[ "$(echo "$_l" | jq length)" = 0 ] || fail "$1: dst list is not empty: $("$DST" list)"
}
# wait_stdout NAME: the first line dst NAME printed on stdout (its log holds
# stdout only; stderr goes to NAME.err).
wait_stdout() {
	_i=0
	while [ ! -s "$VMTEST_TMP/$1.log" ]; do
		_i=$((_i + 1))
		[ "$_i" -le 400 ] || { echo "ERROR: dst $1 printed nothing within 20s: $(tail -n 3 "$VMTEST_TMP/$1.err")" >&2; return 1; }
		sleep 0.05
	done
	sleep 0.1
	head -n 1 "$VMTEST_TMP/$1.log"
}

backing=$VMTEST_TMP/backing.img
mk_file "$backing" 32
no_devices "at start"

# 1. SIGTERM leaves nothing behind.
# shellcheck disable=SC2016 # expanded by the inner shell
run_bg d1 sh -c 'exec "$0" add file --path "$1" 2>"$2"' "$DST" "$backing" "$VMTEST_TMP/d1.err"
first=$(wait_stdout d1)
case $first in /dev/ublkb[0-9]*) ;; *) fail "first stdout line is '$first', want the device path" ;; esac
[ -b "$first" ] || fail "$first is not a block device"
id=${first#/dev/ublkb}
"$DST" list --json | jq -e --argjson id "$id" '.[] | select(.id == $id and .running and (.target | startswith("file ")))' >/dev/null ||
	fail "dst list does not show device $id as a running file target: $("$DST" list)"
log "device $first listed: $("$DST" list | tail -n +2)"
stop_bg d1 TERM 20 || fail "dst did not exit with status 0 after SIGTERM"
wait_for_gone "$first" 10
no_devices "after SIGTERM"
log "SIGTERM: device removed, dst list empty"

# 2. kill -9: the device stays until `dst del`.
run_bg d2 "$DST" add file --path "$backing"
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/d2.log") && [ -b "$dev" ]; do
	i=$((i + 1)); [ $i -le 400 ] || fail "no device from d2"; sleep 0.05
done
id=${dev#/dev/ublkb}
dd if=/dev/urandom of="$dev" bs=4k count=16 oflag=direct status=none
stop_bg d2 KILL 10 || true
sleep 1
state=$("$DST" list --json | jq -r --argjson id "$id" '.[] | select(.id == $id) | "\(.state) running=\(.running)"')
log "after kill -9: device $id: ${state:-not listed}; nodes: $(ublk_nodes)"
[ -n "$state" ] || fail "device $id vanished by itself after kill -9 (expected it to need dst del)"
"$DST" del "$id" >"$VMTEST_TMP/del.out" 2>&1 || { cat "$VMTEST_TMP/del.out"; fail "dst del $id failed"; }
log "dst del $id: $(cat "$VMTEST_TMP/del.out")"
wait_for_gone "/dev/ublkb$id" 10
wait_for_gone "/dev/ublkc$id" 10
no_devices "after kill -9 and dst del"

# 3. dst del of a device that does not exist.
rc=0; "$DST" del 77 >"$VMTEST_TMP/del77" 2>&1 || rc=$?
log "dst del 77: exit $rc: $(cat "$VMTEST_TMP/del77")"
[ "$rc" != 0 ] || fail "dst del of a non-existent device succeeded"
grep -q "device 77 does not exist" "$VMTEST_TMP/del77" || fail "dst del 77 says '$(cat "$VMTEST_TMP/del77")', want 'device 77 does not exist'"

# 4. Bad command lines fail before anything is created.
mkdir -p "$VMTEST_TMP/adir"
: >"$VMTEST_TMP/empty.img"
dd if=/dev/zero of="$VMTEST_TMP/odd.img" bs=1000 count=1 status=none
bad() { # WANT_RC WANT_TEXT ARGS...: dst ARGS must exit WANT_RC (any non-zero if "") saying WANT_TEXT
	_want=$1 _text=$2; shift 2
	_rc=0; timeout 20 "$DST" "$@" >"$VMTEST_TMP/bad.out" 2>&1 || _rc=$?
	log "dst $*: exit $_rc: $(grep -v '^$' "$VMTEST_TMP/bad.out" | tail -n 1)"
	[ "$_rc" != 0 ] || fail "dst $* succeeded"
	[ "$_rc" != 124 ] || fail "dst $* hung (did it create a device?)"
	[ -z "$_want" ] || [ "$_rc" = "$_want" ] || fail "dst $*: exit status $_rc, want $_want"
	grep -q -- "$_text" "$VMTEST_TMP/bad.out" || fail "dst $*: message does not mention '$_text': $(cat "$VMTEST_TMP/bad.out")"
	no_devices "after dst $*"
}
bad 2 "not understood" add null --size 1Gx
bad 2 "--queues 0 out of range" add file --path "$backing" -q 0
bad 2 "--depth 5000 out of range" add file --path "$backing" -d 5000
bad 2 "--path is required" add file
bad 2 "--max-io" add file --path "$backing" --max-io 3000
bad 2 "not defined" add file --path "$backing" --size 1G
bad 1 "is a directory" add file --path "$VMTEST_TMP/adir"
bad 1 "does not exist" add file --path "$VMTEST_TMP/missing.img"
bad 1 "empty" add file --path "$VMTEST_TMP/empty.img"
bad 1 "not a multiple" add file --path "$VMTEST_TMP/odd.img"
bad 1 "character device" add file --path /dev/null
log "bad command lines refused, nothing created"
