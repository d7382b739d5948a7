#!/bin/sh
# dst attach against standard NBD servers in the guest: nbdkit memory and
# nbdkit file over loopback TCP, nbdkit file over a Unix socket
# (nbd+unix://), qemu-nbd (raw, cache=none, aio=io_uring) and nbd-server
# (config file). Each: attach, fio crc32c verify (4k random depth 32, 64k
# sequential depth 8), dst del. Then for the file-backed servers (nbdkit
# file on TCP and on the Unix socket, qemu-nbd, nbd-server): a fio write +
# verify job over half the device (10-30 s) while the server is SIGKILLed
# twice, in the write and in the verify phase, and each time restarted
# 1.5 s later on the same address with the same file; fio must finish
# with zero errors, and the client must have reconnected (at least once
# per kill). Reports server down time (kill -> answering again), restart
# -> I/O flowing, reconnects, resends and timeouts, and connections lost
# while no server died.
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
#   session. It advertises CAN_MULTI_CONN; no flags are needed. Under
#   TCG a new nbd-server's parent burns 2-20 s of CPU before it greets its
#   first client (later ones: under a second), so it counts as started
#   once nbdinfo got an answer.
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
need_cmd nbdkit qemu-nbd nbd-server nbdinfo
# A dst from before the NBD client rejects the scheme at once.
if timeout 10 "$DST" attach --timeout 1s --retries 0 nbd://127.0.0.1:1/probe 2>&1 | grep -q 'unknown scheme "nbd"'; then
	skip "this dst attach does not take nbd:// URLs"
fi

SIZE_MIB=64
MPORT=9121   # dst attach --metrics-listen in the restart tests
# The retry budget, timeout x (retries + 1) = 62 s, is far longer than the
# outage: 1.5 s + the server's start, which for nbd-server was up to 21 s.
RESTART_FLAGS="--timeout 2s --retries 30 --ping 1s"
AIO=io_uring
nbds_first=""  # seconds until each nbd-server started answered

# running NAME: daemon NAME still runs (bg_alive counts a zombie as alive).
running() {
	_p=$(bg_pid "$1") && kill -0 "$_p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$_p/stat" 2>/dev/null)" != Z ]
}
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
	! listening "$1" || fail "the address of server $1 is still in use before it starts (a leftover server?)"
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
		if [ "$1" != nbds ] && ! running "$1"; then
			fail "server $1 exited at start: $(tail -n 3 "$VMTEST_TMP/$1.log")"
		fi
		_i=$((_i + 1)); [ "$_i" -le 600 ] || fail "server $1 does not listen after 30s"
		sleep 0.05
	done
	if [ "$1" = nbds ]; then
		# A new nbd-server's parent spends 5-17 s of CPU (utime) in this
		# guest before it sends the greeting of its first connection;
		# later ones take 0.2-0.6 s. Until it has answered one, clients
		# time out (dst attach: "read greeting: i/o timeout"), so that
		# first answer is part of its start (and of its down time).
		_t=$(now)
		_sz=$(timeout 60 nbdinfo --size "$(url_of nbds)" 2>"$VMTEST_TMP/nbdinfo.err") ||
			fail "nbd-server did not answer a first connection within 60s: $(tail -n 1 "$VMTEST_TMP/nbdinfo.err")"
		[ "$_sz" = $((SIZE_MIB << 20)) ] || fail "nbdinfo --size on nbd-server: $_sz"
		nbds_first="$nbds_first $(secs "$_t" "$(now)")"
		log "nbd-server answered its first connection after $(secs "$_t" "$(now)") s"
	fi
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
		_rc=0; stop_bg "$1" "${2:-KILL}" 10 2>/dev/null || _rc=$?
		if [ "$_rc" = 124 ]; then
			# seen once: qemu-nbd ignoring a TERM right after it started
			report "server $1 still runs 10 s after SIG${2:-KILL}: SIGKILL"
			stop_bg "$1" KILL 10 || [ $? != 124 ] || fail "server $1 survives SIGKILL"
		fi
	fi
	! listening "$1" || fail "server $1 still listens after it was killed"
}

# attach NAME URL [FLAG...]: dst attach as daemon NAME; sets dev and id.
attach() {
	_n=$1 _u=$2; shift 2
	run_bg "$_n" "$DST" attach "$@" "$_u"
	dev=$(dst_device "$_n" 60)
	id=${dev#/dev/ublkb}
	[ "$(dev_size "$dev")" = $((SIZE_MIB << 20)) ] || fail "$dev ($_u) has $(dev_size "$dev") bytes, want $SIZE_MIB MiB"
	# The device can appear while the other queues still connect
	# ("connecting" for a moment).
	_i=0
	while _l=$("$DST" list --json | jq -c --argjson id "$id" '.[] | select(.id == $id) | {url, conn, queues, depth, state}') &&
		[ "$(echo "$_l" | jq -r .conn)" != up ]; do
		_i=$((_i + 1)); [ "$_i" -le 30 ] || fail "dst list does not show $dev connected after 15s: $_l"
		sleep 0.5
	done
	log "attached $_u as $dev: $_l"
}
# lost NAME: the connections dst NAME logged as lost.
lost() { grep -c 'connection lost' "$VMTEST_TMP/$1.log" || true; }
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
while running qnbd && ! listening qnbd; do
	i=$((i + 1)); [ $i -le 600 ] || fail "qemu-nbd does not listen after 30s"
	sleep 0.05
done
if ! listening qnbd; then
	report "qemu-nbd --aio=io_uring failed ($(tail -n 1 "$VMTEST_TMP/qnbd.log")): using --aio=threads"
	AIO=threads
fi
server_kill qnbd TERM

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
	report "$s $(url_of "$s") ${flags:-(default flags)}: $(echo "$out1" | sed 's/.*: OK, //'); 64k seq: $(echo "$out2" | sed 's/.*: OK, //'); $(attach_stats "att-$s"); $(lost "att-$s") connections lost; $(secs "$t0" "$(now)") s"
	# No server died here: a lost connection is worth a look (seen with
	# qemu-nbd: "connection closed by peer" right after the attach).
	[ "$(lost "att-$s")" = 0 ] || report "$s: connections lost without a server restart: $(grep 'connection lost' "$VMTEST_TMP/att-$s.log" | tr '\t' ' ' | paste -sd';' -)"
	server_kill "$s" TERM
done

# ----------------------------------------------------- server killed under fio
# reads_done DEV, writes_done DEV: requests completed on DEV
# (/sys/block/NAME/stat fields 1 and 5).
reads_done() { awk '{print $1}' "/sys/block/${1#/dev/}/stat"; }
writes_done() { awk '{print $5}' "/sys/block/${1#/dev/}/stat"; }
# wait_io DEV reads|writes N: until N more requests of that kind completed
# on DEV since the call (fio $s must still run).
wait_io() {
	_b=$("$2_done" "$1") _i=0
	while [ $(($("$2_done" "$1") - _b)) -lt "$3" ]; do
		fio_alive "$s" || fail "fio ($s) ended before $3 more $2 on $1: too short to kill the server under"
		_i=$((_i + 1)); [ "$_i" -le 1200 ] || fail "$s: not $3 $2 within 60 s"
		sleep 0.05
	done
}
# kill_restart S PHASE: SIGKILL server S, start it again 1.5 s later on
# the same address and file, wait until the probe reads again; one line
# in timings, a summary in $kr (not a $(...) subshell: the server it
# starts must be this shell's child).
kill_restart() {
	_tk=$(now)
	server_kill "$1" KILL
	sleep 1.5
	server_start "$1"
	_tu=$(now)
	_tf=$(flow_after "$_tu" 30)
	echo "$1 $2 kill: down=$(secs "$_tk" "$_tu") flow=$(secs "$_tu" "$_tf") kill_to_flow=$(secs "$_tk" "$_tf")" >>"$VMTEST_TMP/timings"
	log "$1: killed in the $2 phase at $_tk ($(secs "$t_fio" "$_tk") s into fio), listening again at $_tu, I/O flowing at $_tf"
	kt=$(secs "$t_fio" "$_tk")
	kr="$2 phase kill at $kt s: down $(secs "$_tk" "$_tu") s, I/O again $(secs "$_tu" "$_tf") s after the restart"
}
fio_alive() { kill -0 "$(cat "$VMTEST_TMP/fio-$1.pid")" 2>/dev/null; }

: >"$VMTEST_TMP/timings"
for s in file fileu qnbd nbds; do
	server_start "$s"
	# shellcheck disable=SC2086 # RESTART_FLAGS is a list
	attach "rs-$s" "$(url_of "$s")" -q 2 -d 64 $RESTART_FLAGS --metrics-listen "127.0.0.1:$MPORT"
	probe_start "$dev"
	# Half the device (8192 blocks), 4k random writes at depth 16, then
	# the verify reads: the first kill comes after 1500 writes, the
	# second once the verify has read 1500 blocks (the probe reads 20 a
	# second).
	t_fio=$(now)
	fio_bg "$s" "$dev" "$((SIZE_MIB / 2))M"
	wait_io "$dev" writes 1500
	kill_restart "$s" write; k1=$kr k1t=$kt
	wait_io "$dev" reads 1500
	kill_restart "$s" verify; k2=$kr
	fio_check "$s"
	t_end=$(now)
	stop_bg probe TERM 5 || true
	rc=$(metric dst_txn_reconnects_total) rs=$(metric dst_txn_resent_total) to=$(metric dst_txn_timeouts_total)
	nlost=$(lost "rs-$s")
	wr=$(jq '.jobs[0].write.runtime' "$VMTEST_TMP/fio-$s.json")
	awk -v k="$k1t" -v w="$wr" 'BEGIN {exit !(k * 1000 < w)}' ||
		fail "$s: the write phase kill at $k1t s came after fio's $wr ms of writes"
	detach "rs-$s"
	[ "$rc" -ge 2 ] || fail "$s: the server was killed twice, but dst_txn_reconnects_total is $rc"
	report "$s killed twice under fio: $k1; $k2; fio $(secs "$t_fio" "$t_end") s (write phase $(awk -v m="$wr" 'BEGIN {printf "%.1f", m / 1000}') s), $(jq -r '.jobs[0] | "\(.write.io_bytes/1048576|floor) MiB written, \(.read.io_bytes/1048576|floor) MiB verified, errors \(.error)"' "$VMTEST_TMP/fio-$s.json"); reconnects $rc, resent $rs, timeouts $to, $nlost connections lost; at detach: $(attach_stats "rs-$s")"
	server_kill "$s" TERM
done
report "server restarts: $(timing_summary)"
report "nbd-server: first connection answered after (s):$nbds_first"
no_d_state
[ -z "$("$DST" list --json | jq -r '.[].id')" ] || fail "devices left: $("$DST" list)"
log "dst attach against nbdkit (memory, file, unix), qemu-nbd (aio=$AIO) and nbd-server: fio verify and server restarts OK"
