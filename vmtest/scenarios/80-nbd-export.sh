#!/bin/sh
# The kernel's NBD client against dst export --nbd-listen: nbd-client with
# two connections (the exporter offers CAN_MULTI_CONN), fio verify at 4k
# depth 32 and 64k depth 8, then ext4: mkfs, files, e2fsck -fn clean,
# disconnect, connect again, checksums equal.
# timeout: 600
set -eu
. /tests/lib.sh
need_dst
need_cmd nbd-client

backing=$VMTEST_TMP/export.img
mk_file "$backing" 96
load_module nbd nbds_max=2
run_bg exp "$DST" export --nbd-listen nbd://127.0.0.1:10809 --export disk="$backing" --allow 127.0.0.1/32=rw
i=0
until grep -q 'listening nbd://' "$VMTEST_TMP/exp.log"; do
	bg_alive exp || fail "dst export exited: $(tail -n 2 "$VMTEST_TMP/exp.log")"
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done
connect() {
	nbd-client -C 2 -N disk 127.0.0.1 10809 /dev/nbd0 >"$VMTEST_TMP/nbd-client.log" 2>&1 ||
		fail "nbd-client failed: $(cat "$VMTEST_TMP/nbd-client.log")"
	on_exit "nbd-client -d /dev/nbd0"
	[ "$(dev_size /dev/nbd0)" = $((96 << 20)) ] || fail "/dev/nbd0 has $(dev_size /dev/nbd0) bytes"
}
disconnect() {
	nbd-client -d /dev/nbd0 >/dev/null 2>&1 || fail "nbd-client -d failed"
}

connect
report "nbd-client: $(tr '\n' ' ' <"$VMTEST_TMP/nbd-client.log")"
report "exporter: $(grep -o 'NBD client attached.*' "$VMTEST_TMP/exp.log" | head -n 1)"
for job in "4k 32" "64k 8"; do
	# shellcheck disable=SC2086 # BS DEPTH
	out=$(fio_verify /dev/nbd0 $job) || fail "fio verify $job failed"
	report "$out"
done
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=1 /dev/nbd0 || fail "mkfs.ext4 on /dev/nbd0 failed"
mnt=$VMTEST_TMP/mnt
mkdir -p "$mnt"
mount -t ext4 /dev/nbd0 "$mnt" || fail "mount failed"
for n in 1 2 3 4 5; do
	dd if=/dev/urandom of="$mnt/file$n" bs=64k count=$((n * 8)) status=none
done
mkdir "$mnt/dir" && cp "$mnt/file3" "$mnt/dir/copy"
(cd "$mnt" && sha256sum file1 file2 file3 file4 file5 dir/copy) >"$VMTEST_TMP/sums"
umount "$mnt"
e2fsck -fn /dev/nbd0 >"$VMTEST_TMP/fsck" 2>&1 || { cat "$VMTEST_TMP/fsck"; fail "e2fsck -fn found problems"; }
log "e2fsck clean"
disconnect
sleep 0.5

connect
mount -t ext4 /dev/nbd0 "$mnt" || fail "mount after reconnect failed"
(cd "$mnt" && sha256sum -c "$VMTEST_TMP/sums") >/dev/null || fail "checksums differ after reconnect"
umount "$mnt"
disconnect
stop_bg exp TERM 30 || fail "dst export did not exit cleanly"
log "kernel nbd client on dst export --nbd-listen: fio verify, ext4 clean, checksums equal after reconnect"
