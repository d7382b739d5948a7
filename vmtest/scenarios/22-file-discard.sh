#!/bin/sh
# dst file target: discard, write-zeroes, flush and read-only, checked on
# the backing file itself.
#  1. blkdiscard of a range punches a hole in the backing file (fewer
#     allocated blocks) that reads as zeroes; the rest is untouched.
#  2. blkdiscard -z (BLKZEROOUT: WRITE_ZEROES with NOUNMAP) writes zeroes
#     and keeps the range allocated. tmpfs has no FALLOC_FL_ZERO_RANGE, so
#     this also takes dst's synchronous helper path (the backend writes
#     zeroes).
#  3. A flush of the device reaches fdatasync on the backing file (see the
#     comment there for what this can and cannot prove).
#  4. --ro: writes fail, the backing file stays unchanged.
# timeout: 120
set -eu
. /tests/lib.sh
need_dst

# blocks FILE: allocated 512-byte blocks.
blocks() { stat -c %b "$1"; }
# stat_field DEV N: field N of /sys/block/DEV/stat (12 discard I/Os, 16 flush I/Os).
stat_field() { awk -v n="$2" '{print $n}' "/sys/block/${1#/dev/}/stat"; }
# zeroes FILE OFF_MIB LEN_MIB [DIRECT]: the range reads as zeroes.
zeroes() {
	dd if="$1" bs=1M skip="$2" count="$3" ${4:+iflag=direct} status=none | cmp -n $(($3 * 1048576)) - /dev/zero
}
MiB=1048576

# --- 1 and 2: discard and write-zeroes on a tmpfs backing file.
backing=$VMTEST_TMP/backing.img
mk_file "$backing" 64
run_bg dst1 "$DST" add file --path "$backing"
dev=$(dst_device dst1)
q=/sys/block/${dev#/dev/}/queue
log "$dev: discard_max_bytes=$(cat "$q"/discard_max_bytes) discard_granularity=$(cat "$q"/discard_granularity) write_zeroes_max_bytes=$(cat "$q"/write_zeroes_max_bytes) write_cache=$(cat "$q"/write_cache) fua=$(cat "$q"/fua)"
[ "$(cat "$q"/discard_max_bytes)" -gt 0 ] || fail "$dev does not advertise discard"
[ "$(cat "$q"/write_zeroes_max_bytes)" -gt 0 ] || fail "$dev does not advertise write-zeroes"

dd if=/dev/urandom of="$VMTEST_TMP/rand" bs=1M count=32 status=none
dd if="$VMTEST_TMP/rand" of="$dev" bs=1M oflag=direct status=none
cmp -n $((32 * MiB)) "$backing" "$VMTEST_TMP/rand" || fail "data written through $dev is not in the backing file"

b0=$(blocks "$backing"); d0=$(stat_field "$dev" 12)
blkdiscard -o $((4 * MiB)) -l $((8 * MiB)) "$dev"
b1=$(blocks "$backing"); d1=$(stat_field "$dev" 12)
log "blkdiscard 8 MiB at 4 MiB: backing file blocks $b0 -> $b1, device discard I/Os $d0 -> $d1"
[ "$d1" -gt "$d0" ] || fail "no DISCARD reached $dev"
[ $((b0 - b1)) -ge $((8 * MiB / 512)) ] || fail "discard freed $((b0 - b1)) blocks of the backing file, want $((8 * MiB / 512)) (no hole punched)"
zeroes "$backing" 4 8 direct || fail "discarded range of the backing file is not zeroes"
zeroes "$dev" 4 8 direct || fail "discarded range of $dev does not read as zeroes"
cmp -n $((4 * MiB)) "$backing" "$VMTEST_TMP/rand" || fail "discard changed data before the range"
dd if="$backing" bs=1M skip=12 count=20 status=none | cmp -n $((20 * MiB)) - "$VMTEST_TMP/rand" 0 $((12 * MiB)) ||
	fail "discard changed data after the range"

b0=$(blocks "$backing")
blkdiscard -z -o $((16 * MiB)) -l $((4 * MiB)) "$dev"
b1=$(blocks "$backing")
log "blkdiscard -z 4 MiB at 16 MiB: backing file blocks $b0 -> $b1"
zeroes "$backing" 16 4 direct || fail "blkdiscard -z: backing file range is not zeroes"
zeroes "$dev" 16 4 direct || fail "blkdiscard -z: $dev range does not read as zeroes"
[ "$b1" -ge $((b0 - 8)) ] || fail "blkdiscard -z (NOUNMAP) freed blocks of the backing file: $b0 -> $b1"
dd if="$backing" bs=1M skip=20 count=12 status=none | cmp -n $((12 * MiB)) - "$VMTEST_TMP/rand" 0 $((20 * MiB)) ||
	fail "blkdiscard -z changed data after the range"
stop_bg dst1 TERM 20 || fail "dst did not exit cleanly"
wait_for_gone "$dev" 10

# --- 3: flush reaches fdatasync of the backing file.
# The backing file is on ext4 on a loop device, so that an fdatasync by dst
# shows up as a FLUSH request counted in the loop device's stat (ext4 sends
# one for fdatasync). The test writes through the ublk device's page cache
# (buffered dd), then fsyncs the device node (`sync DEV`: writeback, then
# one FLUSH to the device, which dst turns into fdatasync).
# It proves: the kernel treats the device as having a volatile cache
# (write_cache "write back") and sends it FLUSH; the FLUSH completed; the
# buffered data reached the backing file; and the loop device under the
# file received a flush right then, while O_DIRECT writes alone did not
# cause one (control step) -- so dst's FLUSH handling issued an fsync that
# reached the filesystem.
# It cannot prove durability on real media (everything is RAM here), that
# the flush came after the data in the device's order (the kernel only sends
# FLUSH after the writes it covers completed), nor that it was fdatasync
# rather than fsync.
mk_file "$VMTEST_TMP/loop.img" 64
loopdev=$(mk_loop "$VMTEST_TMP/loop.img" on)
mke2fs -q -F -t ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$loopdev"
mkdir -p "$VMTEST_TMP/mnt"
# commit=600: no periodic journal commit (and its flush) during the test.
mount -t ext4 -o commit=600 "$loopdev" "$VMTEST_TMP/mnt"
on_exit "umount $VMTEST_TMP/mnt"
file=$VMTEST_TMP/mnt/disk.img
dd if=/dev/zero of="$file" bs=1M count=16 status=none
sync
run_bg dst2 "$DST" add file --path "$file"
on_exit 'bg_alive dst2 && stop_bg dst2 TERM 20'
dev=$(dst_device dst2)
q=/sys/block/${dev#/dev/}/queue
[ "$(cat "$q"/write_cache)" = "write back" ] || fail "$dev write_cache is '$(cat "$q"/write_cache)', want 'write back' (FLUSH would never be sent)"
[ "$(cat "$q"/fua)" = 1 ] || fail "$dev does not advertise FUA"
lq=/sys/block/${loopdev#/dev/}/queue
[ "$(cat "$lq/write_cache")" = "write back" ] ||
	fail "$loopdev write_cache is '$(cat "$lq/write_cache")': it would complete flushes without counting them"
sync
sleep 1

# Control: O_DIRECT writes through dst cause no flush on the loop device.
lf0=$(stat_field "$loopdev" 16)
dd if="$VMTEST_TMP/rand" of="$dev" bs=1M count=2 oflag=direct status=none
sleep 1
lf1=$(stat_field "$loopdev" 16)
log "control: O_DIRECT writes, loop flushes $lf0 -> $lf1"
[ "$lf1" = "$lf0" ] || fail "the loop device saw flushes without any FLUSH to $dev ($lf0 -> $lf1): the test cannot tell flushes apart"

uf0=$(stat_field "$dev" 16)
# Hold the device open: the last close of a block device writes its dirty
# pages back (without a flush), and the test wants sync to do it.
exec 3<"$dev"
dd if="$VMTEST_TMP/rand" of="$dev" bs=1M skip=2 seek=2 count=4 status=none
if dd if="$file" bs=1M skip=2 count=4 iflag=direct status=none | cmp -s -n $((4 * MiB)) - "$VMTEST_TMP/rand" 0 $((2 * MiB)); then
	log "before sync: the buffered data is already in the backing file (early writeback)"
else
	log "before sync: the buffered data is not in the backing file yet (in the device's page cache)"
fi
sync "$dev"
exec 3<&-
uf1=$(stat_field "$dev" 16); lf2=$(stat_field "$loopdev" 16)
log "sync $dev: device flushes $uf0 -> $uf1, loop flushes under the backing file $lf1 -> $lf2"
[ "$uf1" -gt "$uf0" ] || fail "sync $dev sent no FLUSH to the device"
[ "$lf2" -gt "$lf1" ] || fail "FLUSH on $dev did not reach the backing file's filesystem (no flush on $loopdev)"
dd if="$file" bs=1M skip=2 count=4 iflag=direct status=none | cmp -n $((4 * MiB)) - "$VMTEST_TMP/rand" 0 $((2 * MiB)) ||
	fail "after sync the backing file does not hold the data"
stop_bg dst2 TERM 20 || fail "dst on the ext4 file did not exit cleanly"
wait_for_gone "$dev" 10

# --- 4: read-only.
sum0=$(sha256sum <"$backing")
run_bg dst3 "$DST" add file --path "$backing" --ro
dev=$(dst_device dst3)
[ "$(cat "/sys/block/${dev#/dev/}/ro")" = 1 ] || fail "$dev is not read-only"
dd if="$dev" of=/dev/null bs=1M count=4 iflag=direct status=none || fail "reading the read-only device failed"
if dd if="$VMTEST_TMP/rand" of="$dev" bs=4k count=1 oflag=direct status=none 2>"$VMTEST_TMP/dd.err"; then
	fail "O_DIRECT write to the read-only device succeeded"
fi
log "O_DIRECT write refused: $(cat "$VMTEST_TMP/dd.err")"
if dd if="$VMTEST_TMP/rand" of="$dev" bs=4k count=1 conv=fsync status=none 2>"$VMTEST_TMP/dd.err"; then
	fail "buffered write to the read-only device succeeded"
fi
log "buffered write refused: $(cat "$VMTEST_TMP/dd.err")"
if blkdiscard -o 0 -l $MiB "$dev" 2>"$VMTEST_TMP/bd.err"; then fail "blkdiscard on the read-only device succeeded"; fi
log "blkdiscard refused: $(cat "$VMTEST_TMP/bd.err")"
stop_bg dst3 TERM 20 || fail "read-only dst did not exit cleanly"
wait_for_gone "$dev" 10
[ "$(sha256sum <"$backing")" = "$sum0" ] || fail "the backing file changed under a read-only device"
log "read-only device: writes refused, backing file unchanged"
