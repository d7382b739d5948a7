#!/bin/sh
# ext4 on a dst file device survives a restart of dst: mkfs.ext4 on the
# device, mount, write files, record their sha256sums, unmount, e2fsck -fn
# must be clean, stop dst (SIGTERM), serve the same backing file again,
# mount, and the checksums must match. e2fsck of the backing file itself
# checks that everything reached it.
# timeout: 120
set -eu
. /tests/lib.sh
need_dst

backing=$VMTEST_TMP/backing.img
mnt=$VMTEST_TMP/mnt
mkdir -p "$mnt"
mk_file "$backing" 128
on_exit "umount $mnt 2>/dev/null"

run_bg dst1 "$DST" add file --path "$backing"
dev=$(dst_device dst1)
log "serving $backing as $dev"
# mkfs discards the whole device first (DISCARD -> holes in the file).
mkfs.ext4 -q -F "$dev"
mount -t ext4 "$dev" "$mnt"
mkdir -p "$mnt/dir/sub"
dd if=/dev/urandom of="$mnt/big" bs=1M count=8 status=none
for i in 1 2 3 4 5 6 7 8; do
	dd if=/dev/urandom of="$mnt/dir/small$i" bs=1k count=$((i * 3)) status=none
done
dd if=/dev/urandom of="$mnt/dir/sub/direct" bs=64k count=16 oflag=direct status=none
seq 1 20000 >"$mnt/dir/sub/text"
(cd "$mnt" && find . -type f | sort | xargs sha256sum) >"$VMTEST_TMP/sums"
log "wrote $(wc -l <"$VMTEST_TMP/sums") files, $(du -sk "$mnt" | cut -f1) KiB"
umount "$mnt"
e2fsck -f -n "$dev" >"$VMTEST_TMP/fsck1" 2>&1 || { cat "$VMTEST_TMP/fsck1"; fail "e2fsck -fn on $dev found problems"; }
log "e2fsck -fn $dev: clean"

stop_bg dst1 TERM 20 || fail "dst did not exit cleanly after SIGTERM"
wait_for_gone "$dev" 10
[ "$("$DST" list --json | jq length)" = 0 ] || fail "dst list not empty after the device stopped: $("$DST" list)"
# Everything the filesystem wrote is in the backing file now.
e2fsck -f -n "$backing" >"$VMTEST_TMP/fsck2" 2>&1 || { cat "$VMTEST_TMP/fsck2"; fail "e2fsck -fn on the backing file found problems"; }
log "e2fsck -fn of the backing file: clean"

run_bg dst2 "$DST" add file --path "$backing"
dev=$(dst_device dst2)
log "serving $backing again as $dev"
mount -t ext4 "$dev" "$mnt"
(cd "$mnt" && sha256sum -c "$VMTEST_TMP/sums") >"$VMTEST_TMP/check" 2>&1 || {
	grep -v ': OK$' "$VMTEST_TMP/check" >&2
	fail "checksums differ after serving the file again"
}
log "all $(grep -c ': OK$' "$VMTEST_TMP/check") checksums equal after the restart"
umount "$mnt"
stop_bg dst2 TERM 20 || fail "second dst did not exit cleanly"
wait_for_gone "$dev" 10
