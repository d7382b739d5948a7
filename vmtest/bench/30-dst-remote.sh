#!/bin/sh
# The remote device (label dst-remote: dst export + dst attach over
# loopback TCP) against the kernel NBD client with Debian's nbd-server
# (label nbd, one connection), both on the same 256 MiB tmpfs backing file.
# timeout: 600
set -eu
. /tests/bench/lib.sh
need_dst
need_cmd nbd-server nbd-client

backing=$VMTEST_TMP/backing
bench_backing_file "$backing" 256

# Kernel baseline: nbd.ko + nbd-client talking to nbd-server.
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
run_bg nbdsrv nbd-server -d -C "$VMTEST_TMP/nbd.conf"
sleep 1
nbd-client -N disk 127.0.0.1 10809 /dev/nbd0 >"$VMTEST_TMP/nbd-client.log" 2>&1 ||
	fail "nbd-client failed: $(cat "$VMTEST_TMP/nbd-client.log")"
[ "$(dev_size /dev/nbd0)" = $((256 << 20)) ] || fail "/dev/nbd0 has $(dev_size /dev/nbd0) bytes"
bench_device /dev/nbd0 nbd
nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
stop_bg nbdsrv TERM 10 || true

# DST on the same file.
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
i=0
until grep -q listening "$VMTEST_TMP/exp.log"; do
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
# shellcheck disable=SC2086 # DST_ATTACH_ARGS is a list of options
run_bg att "$DST" attach ${DST_ATTACH_ARGS:-} dst://127.0.0.1:10811/disk
i=0
until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/att.log") && [ -b "$dev" ]; do
	bg_alive att || fail "dst attach exited: $(tail -n 2 "$VMTEST_TMP/att.log")"
	i=$((i + 1)); [ $i -le 600 ] || fail "no device within 30s"; sleep 0.05
done
bench_device "$dev" dst-remote nbd
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
stop_bg exp TERM 30 || true
