#!/bin/sh
# dst attach against standard NBD servers in the guest: nbdkit memory and
# nbdkit file over loopback TCP, nbdkit file over a Unix socket
# (nbd+unix://), qemu-nbd (raw, cache=none, aio=io_uring) and nbd-server
# (config file). Each: attach, fio crc32c verify (4k random depth 32, 64k
# sequential depth 8), dst del. Then for the file-backed servers (nbdkit
# file on TCP and on the Unix socket, qemu-nbd, nbd-server): a fio write +
# verify job of about 20 s while the server is SIGKILLed and, after 1.5 s,
# restarted on the same address with the same file; fio must finish with
# zero errors, and the client must have reconnected. Reports server down
# time, kill -> I/O flowing, reconnects, resends and timeouts.
#
# What the servers need for a client that reconnects and opens one
# connection per queue (seen in this guest):
# - qemu-nbd exits when its first client disconnects unless -t
#   (--persistent), and with the default --shared=1 it neither advertises
#   CAN_MULTI_CONN nor accepts a second connection (the connect hangs in the
#   listen backlog): hence -t -e 8.
# - nbd-server -d serves a single connection and exits after it; as a
#   daemon it forks a child per connection (the children keep serving when
#   only the parent dies), so "the server dies" is a SIGKILL of its whole
#   session. It advertises CAN_MULTI_CONN; no flags are needed.
# - nbdkit -f serves any number of connections (any export name) and
#   advertises CAN_MULTI_CONN. A SIGKILLed nbdkit -U leaves its socket
#   behind and a new one fails with "Address already in use": remove it.
# timeout: 1200
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
# shellcheck source=4-fault-lib.sh
. /tests/scenarios/4-fault-lib.sh
need_dst
need_cmd nbdkit qemu-nbd nbd-server
# A dst from before the NBD client rejects the scheme at once.
if timeout 10 "$DST" attach --timeout 1s --retries 0 nbd://127.0.0.1:1/probe 2>&1 | grep -q 'unknown scheme "nbd"'; then
	skip "this dst attach does not take nbd:// URLs"
fi

SIZE_MIB=64
MPORT=9121   # dst attach --metrics-listen in the restart tests
# The retry budget, timeout x (retries + 1) = 22 s, is far longer than the
# outage (1.5 s + the server's start).
RESTART_FLAGS="--timeout 2s --retries 10 --ping 1s"
AIO=io_uring

# tcp_listening PORT: something listens on 127.0.0.1:PORT (/proc/net/tcp).
tcp_listening() {
	awk -v p="$(printf ':%04X' "$1")" '$2 == "0100007F" p && $4 == "0A" {f = 1} END {exit !f}' /proc/net/tcp
}
# unix_listening PATH: a listening Unix socket is bound to PATH.
unix_listening() {
	awk -v p="$1" '$4 == "00010000" && $8 == p {f = 1} END {exit !f}' /proc/net/unix
}

# Per server: its URL, its listen check and its start and kill.
url_of() {
	case $1 in
	mem) echo nbd://127.0.0.1:10901/disk ;;
	file) echo nbd://127.0.0.1:10902/disk ;;
	fileu) echo "nbd+unix:///disk?socket=$VMTEST_TMP/nbdkit.sock" ;;
	qnbd) echo nbd://127.0.0.1:10903/disk ;;
	nbds) echo nbd://127.0.0.1:10904/disk ;;
	esac
}
listening() {
	case $1 in
	mem) tcp_listening 10901 ;;
	file) tcp_listening 10902 ;;
	fileu) unix_listening "$VMTEST_TMP/nbdkit.sock" ;;
	qnbd) tcp_listening 10903 ;;
	nbds) tcp_listening 10904 ;;
	esac
}
# img_of NAME: the backing file of a file-backed server (made on first use).
img_of() {
	_img=$VMTEST_TMP/$1.img
	[ -f "$_img" ] || mk_file "$_img" "$SIZE_MIB"
	echo "$_img"
}
# nbds_pgid: the session (= process group) of the nbd-server daemon.
nbds_pgid() { cat "$VMTEST_TMP/nbds.pid" 2>/dev/null; }

# server_start NAME: start server NAME (daemon NAME, or for nbd-server a
# daemon whose pid file is nbds.pid) and return once it listens.
server_start() {
	case $1 in
	mem) run_bg mem nbdkit -f -i 127.0.0.1 -p 10901 memory "${SIZE_MIB}M" ;;
	file) run_bg file nbdkit -f -i 127.0.0.1 -p 10902 file "$(img_of file)" ;;
	fileu)
		rm -f "$VMTEST_TMP/nbdkit.sock"
		run_bg fileu nbdkit -f -U "$VMTEST_TMP/nbdkit.sock" file "$(img_of fileu)" ;;
	qnbd)
		run_bg qnbd qemu-nbd -f raw --cache=none --aio="$AIO" -t -e 8 -b 127.0.0.1 -p 10903 \
			-x disk "$(img_of qnbd)" ;;
	nbds)
		cat >"$VMTEST_TMP/nbds.conf" <<-CONF
		[generic]
		    user = root
		    group = root
		    listenaddr = 127.0.0.1
		    port = 10904
		[disk]
		    exportname = $(img_of nbds)
		CONF
		rm -f "$VMTEST_TMP/nbds.pid"
		# It daemonizes (setsid): killed with its session at exit.
		nbd-server -C "$VMTEST_TMP/nbds.conf" -p "$VMTEST_TMP/nbds.pid" >"$VMTEST_TMP/nbds.log" 2>&1 ||
			fail "nbd-server failed to start: $(tail -n 2 "$VMTEST_TMP/nbds.log")"
		wait_for_file "$VMTEST_TMP/nbds.pid" 10 || fail "nbd-server wrote no pid file"
		on_exit "/bin/busybox kill -KILL -$(nbds_pgid) 2>/dev/null" ;;
	esac
	_i=0
	until listening "$1"; do
		if [ "$1" != nbds ] && ! bg_alive "$1"; then
			fail "server $1 exited at start: $(tail -n 3 "$VMTEST_TMP/$1.log")"
		fi
		_i=$((_i + 1)); [ "$_i" -le 600 ] || fail "server $1 does not listen after 30s"
		sleep 0.05
	done
}
# server_kill NAME [SIGNAL=KILL]: the server and, for nbd-server, every
# connection it forked.
server_kill() {
	if [ "$1" = nbds ]; then
		_pg=$(nbds_pgid)
		/bin/busybox kill -"${2:-KILL}" -"$_pg" 2>/dev/null || true
		_i=0
		# fields after the command name: state ppid pgrp ...
		while sed 's/^.*) //' /proc/[0-9]*/stat 2>/dev/null | awk -v g="$_pg" '$3 == g && $1 != "Z" {f = 1} END {exit !f}'; do
			_i=$((_i + 1)); [ "$_i" -le 100 ] || fail "nbd-server session $_pg still alive 10s after SIG${2:-KILL}"
			sleep 0.1
		done
	else
		stop_bg "$1" "${2:-KILL}" 10 || [ $? != 124 ] || fail "server $1 did not die"
	fi
}

# attach NAME URL [FLAG...]: dst attach as daemon NAME; sets dev and id.
attach() {
	_n=$1 _u=$2; shift 2
	run_bg "$_n" "$DST" attach "$@" "$_u"
	dev=$(dev_of "$_n" 60)
	id=${dev#/dev/ublkb}
	[ "$(dev_size "$dev")" = $((SIZE_MIB << 20)) ] || fail "$dev ($_u) has $(dev_size "$dev") bytes, want $SIZE_MIB MiB"
	_l=$("$DST" list --json | jq -c --argjson id "$id" '.[] | select(.id == $id) | {url, conn, queues, depth, state}')
	[ "$(echo "$_l" | jq -r .conn)" = up ] || fail "dst list does not show $dev connected: $_l"
	log "attached $_u as $dev: $_l"
}
# detach NAME: dst del of the device of daemon NAME, which must then exit 0.
detach() {
	"$DST" del "$id" >"$VMTEST_TMP/del.out" 2>&1 || fail "dst del $id failed: $(cat "$VMTEST_TMP/del.out")"
	_rc=0; stop_bg "$1" 0 30 || _rc=$?
	[ "$_rc" = 0 ] || fail "dst attach ($1) exited $_rc after dst del $id: $(tail -n 3 "$VMTEST_TMP/$1.log")"
	wait_for_gone "$dev" 10
}
metric() {
	wget -q -O - "http://127.0.0.1:$MPORT/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { v += $NF } END { print v + 0 }'
}

# ---------------------------------------------------------------- qemu-nbd aio
# io_uring, or threads when qemu-nbd cannot use it in this guest.
# qemu-nbd opens the image (and sets up its io_uring) before it listens.
run_bg qnbd qemu-nbd -f raw --cache=none --aio=io_uring -t -e 8 -b 127.0.0.1 -p 10903 -x disk "$(img_of qnbd)"
i=0
while bg_alive qnbd && ! listening qnbd; do
	i=$((i + 1)); [ $i -le 600 ] || fail "qemu-nbd does not listen after 30s"
	sleep 0.05
done
if ! listening qnbd; then
	report "qemu-nbd --aio=io_uring failed ($(tail -n 1 "$VMTEST_TMP/qnbd.log")): using --aio=threads"
	AIO=threads
fi
stop_bg qnbd TERM 10 || true

# ------------------------------------------------------------ fio verify each
for s in mem file fileu qnbd nbds; do
	server_start "$s"
	flags="-q 2 -d 64"
	[ "$s" != mem ] || flags=""  # the defaults: 1 queue, depth 128
	t0=$(now)
	# shellcheck disable=SC2086 # flags is a list
	attach "att-$s" "$(url_of "$s")" $flags
	out1=$(fio_verify "$dev" 4k 32)
	out2=$(fio_verify "$dev" 64k 8 --rw=write)
	detach "att-$s"
	report "$s $(url_of "$s") ${flags:-(default flags)}: $(echo "$out1" | sed 's/.*: OK, //'); 64k seq: $(echo "$out2" | sed 's/.*: OK, //'); $(attach_stats "att-$s"); $(secs "$t0" "$(now)") s"
	server_kill "$s" TERM
done

# ----------------------------------------------------- server killed under fio
: >"$VMTEST_TMP/timings"
for s in file fileu qnbd nbds; do
	server_start "$s"
	# shellcheck disable=SC2086 # RESTART_FLAGS is a list
	attach "rs-$s" "$(url_of "$s")" -q 2 -d 64 $RESTART_FLAGS --metrics-listen "127.0.0.1:$MPORT"
	probe_start "$dev"
	t_fio=$(now)
	fio_bg "$s" "$dev" 48M
	sleep 4
	kill -0 "$(cat "$VMTEST_TMP/fio-$s.pid")" 2>/dev/null || fail "fio ($s) ended within 4 s: no I/O to kill the server under"
	t_kill=$(now)
	server_kill "$s" KILL
	sleep 1.5
	server_start "$s"
	t_up=$(now)
	t_flow=$(flow_after "$t_up" 30)
	fio_check "$s"
	t_end=$(now)
	stop_bg probe TERM 5 || true
	rc=$(metric dst_txn_reconnects_total) rs=$(metric dst_txn_resent_total) to=$(metric dst_txn_timeouts_total)
	lost=$(grep -c 'connection lost' "$VMTEST_TMP/rs-$s.log" || true)
	wr=$(jq '.jobs[0].write.runtime' "$VMTEST_TMP/fio-$s.json")
	detach "rs-$s"
	[ "$rc" -ge 1 ] || fail "$s: the server was killed, but dst_txn_reconnects_total is $rc"
	echo "$s restart: down=$(secs "$t_kill" "$t_up") flow=$(secs "$t_up" "$t_flow") kill_to_flow=$(secs "$t_kill" "$t_flow")" >>"$VMTEST_TMP/timings"
	report "$s killed under fio $(secs "$t_fio" "$t_kill") s into the job (write phase $(awk -v m="$wr" 'BEGIN {printf "%.1f", m / 1000}') s): down $(secs "$t_kill" "$t_up") s, I/O again $(secs "$t_up" "$t_flow") s after the restart; fio $(secs "$t_fio" "$t_end") s, $(jq -r '.jobs[0] | "\(.write.io_bytes/1048576|floor) MiB written, \(.read.io_bytes/1048576|floor) MiB verified, errors \(.error)"' "$VMTEST_TMP/fio-$s.json"); reconnects $rc, resent $rs, timeouts $to, $lost connections lost; at detach: $(attach_stats "rs-$s")"
	server_kill "$s" TERM
done
report "server restarts: $(timing_summary)"
no_d_state
[ -z "$("$DST" list --json | jq -r '.[].id')" ] || fail "devices left: $("$DST" list)"
log "dst attach against nbdkit (memory, file, unix), qemu-nbd (aio=$AIO) and nbd-server: fio verify and server restarts OK"
