#!/bin/sh
# The NBD client side: dst attach nbd:// (label dst-nbd) against the kernel
# NBD client (label nbd-kernel, nbd.ko + nbd-client, one connection), both
# talking to the same Debian nbd-server over loopback TCP, on the same
# 256 MiB tmpfs backing file. The server is the same for both, so the
# ratio is the client's.
# timeout: 600
set -eu
. /tests/bench/lib.sh
need_dst
need_cmd nbd-server nbd-client

backing=$VMTEST_TMP/backing
bench_backing_file "$backing" 256

load_module nbd nbds_max=2
cat >"$VMTEST_TMP/nbd.conf" <<CONF
[generic]
    user = root
    group = root
    listenaddr = 127.0.0.1
    port = 10809
[disk]
    exportname = $backing
CONF
# nbd-server forks a child per connection; -d would serve only one, which
# is all the kernel client needs; dst attach needs the server to stay.
nbd-server -C "$VMTEST_TMP/nbd.conf" -p "$VMTEST_TMP/nbd.pid" >"$VMTEST_TMP/nbd-server.log" 2>&1 ||
	fail "nbd-server: $(cat "$VMTEST_TMP/nbd-server.log")"
sleep 1
nbd-client -N disk 127.0.0.1 10809 /dev/nbd0 >"$VMTEST_TMP/nbd-client.log" 2>&1 ||
	fail "nbd-client failed: $(cat "$VMTEST_TMP/nbd-client.log")"
[ "$(dev_size /dev/nbd0)" = $((256 << 20)) ] || fail "/dev/nbd0 has $(dev_size /dev/nbd0) bytes"
bench_device /dev/nbd0 nbd-kernel
nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true

run_bg att "$DST" attach nbd://127.0.0.1:10809/disk
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/att.log") && [ -b "$dev" ]; do
	bg_alive att || fail "dst attach exited: $(tail -n 2 "$VMTEST_TMP/att.log")"
	i=$((i + 1)); [ $i -le 600 ] || fail "no device within 30s"; sleep 0.05
done
bench_device "$dev" dst-nbd nbd-kernel
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
kill "$(cat "$VMTEST_TMP/nbd.pid")" 2>/dev/null || true
