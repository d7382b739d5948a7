#!/bin/sh
# ext4 on a remote device: mkfs, mount, write files, unmount, e2fsck -fn
# clean; detach, attach again, and the checksums are equal.
# timeout: 300
set -eu
. /tests/lib.sh
need_dst

backing=$VMTEST_TMP/export.img
mk_file "$backing" 96
run_bg exp "$DST" export --listen dst://127.0.0.1:10811 --export disk="$backing" --allow 127.0.0.1/32=rw
attach() {
	run_bg "$1" "$DST" attach dst://127.0.0.1:10811/disk 
	_i=0
	until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/$1.log") && [ -b "$dev" ]; do
		bg_alive "$1" || fail "dst attach exited: $(tail -n 2 "$VMTEST_TMP/$1.log")"
		_i=$((_i + 1)); [ $_i -le 600 ] || fail "no device within 30s"
		sleep 0.05
	done
}
i=0
until "$DST" list >/dev/null 2>&1 && grep -q listening "$VMTEST_TMP/exp.log"; do
	i=$((i + 1)); [ $i -le 400 ] || fail "exporter did not start"; sleep 0.05
done

attach a1
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=1 "$dev" || fail "mkfs.ext4 on $dev failed"
mnt=$VMTEST_TMP/mnt
mkdir -p "$mnt"
mount -t ext4 "$dev" "$mnt" || fail "mount failed"
for n in 1 2 3 4 5; do
	dd if=/dev/urandom of="$mnt/file$n" bs=64k count=$((n * 8)) status=none
done
mkdir "$mnt/dir" && cp "$mnt/file3" "$mnt/dir/copy"
(cd "$mnt" && sha256sum file1 file2 file3 file4 file5 dir/copy) >"$VMTEST_TMP/sums"
umount "$mnt"
e2fsck -fn "$dev" >"$VMTEST_TMP/fsck" 2>&1 || { cat "$VMTEST_TMP/fsck"; fail "e2fsck -fn found problems"; }
log "e2fsck clean"
stop_bg a1 TERM 30 || fail "dst attach did not exit cleanly"
wait_for_gone "$dev" 10

attach a2
mount -t ext4 "$dev" "$mnt" || fail "mount after re-attach failed"
(cd "$mnt" && sha256sum -c "$VMTEST_TMP/sums") >/dev/null || fail "checksums differ after re-attach"
umount "$mnt"
stop_bg a2 TERM 30 || fail "dst attach did not exit cleanly"
stop_bg exp TERM 30 || fail "dst export did not exit cleanly"
log "ext4 on a remote device: clean, checksums equal after re-attach"
