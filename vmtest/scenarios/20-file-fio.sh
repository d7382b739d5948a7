#!/bin/sh
# dst file target under fio crc32c verify jobs (random writes, then every
# block read back and checked) at 4k, 64k and 1m, depth 1 and 32, on two
# backing files: a file on tmpfs, and a file on ext4 over a loop device
# (O_DIRECT through a real filesystem and block device in the guest). Then a
# 2-queue device with one verify job on each CPU, so both queues serve I/O.
# timeout: 240
set -eu
. /tests/lib.sh
need_dst

# verify_all DEV: the bs x depth matrix.
verify_all() {
	for bs in 4k 64k 1m; do
		for qd in 1 32; do
			fio_verify "$1" "$bs" "$qd"
		done
	done
}

# 1. A file on tmpfs.
mk_file "$VMTEST_TMP/tmpfs.img" 64
run_bg dst1 "$DST" add file --path "$VMTEST_TMP/tmpfs.img"
dev=$(dst_device dst1)
log "dst file target on a tmpfs file: $dev ($(dev_size "$dev") bytes)"
grep -q 'O_DIRECT' "$VMTEST_TMP/dst1.log" || fail "dst1 did not report O_DIRECT: $(grep 'backing file' "$VMTEST_TMP/dst1.log")"
verify_all "$dev"
stop_bg dst1 TERM 20 || fail "dst on the tmpfs file did not exit cleanly"
wait_for_gone "$dev" 10

# 2. A file on ext4 on a loop device (direct I/O down to the tmpfs file).
mk_file "$VMTEST_TMP/loop.img" 96
loopdev=$(mk_loop "$VMTEST_TMP/loop.img" on)
mke2fs -q -F -t ext4 -E nodiscard "$loopdev"
mkdir -p "$VMTEST_TMP/mnt"
mount -t ext4 "$loopdev" "$VMTEST_TMP/mnt"
on_exit "umount $VMTEST_TMP/mnt"
dd if=/dev/zero of="$VMTEST_TMP/mnt/disk.img" bs=1M count=48 status=none
run_bg dst2 "$DST" add file --path "$VMTEST_TMP/mnt/disk.img"
on_exit 'bg_alive dst2 && stop_bg dst2 TERM 20'
dev=$(dst_device dst2)
grep 'backing file' "$VMTEST_TMP/dst2.log" | grep -q 'regular file on ext4.*O_DIRECT' ||
	fail "dst2 does not serve an ext4 file with O_DIRECT: $(grep 'backing file' "$VMTEST_TMP/dst2.log")"
log "dst file target on a file on ext4 on $loopdev: $dev"
verify_all "$dev"
stop_bg dst2 TERM 20 || fail "dst on the ext4 file did not exit cleanly"
wait_for_gone "$dev" 10

# 3. Two hardware queues: one verify job pinned to each CPU, on disjoint
# halves, at the same time (blk-mq maps each CPU to its own queue).
run_bg dst3 "$DST" add file --path "$VMTEST_TMP/tmpfs.img" -q 2
dev=$(dst_device dst3)
set -- "/sys/block/${dev#/dev/}/mq/"*
nq=$#
[ "$nq" = 2 ] || fail "$dev has $nq hardware queues, want 2"
log "2-queue device $dev"
out=$VMTEST_TMP/fio-2q.json
if ! fio --ioengine="$(fio_engine)" --direct=1 --rw=randwrite --bs=4k --iodepth=32 --size=16M \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --randrepeat=0 \
	--output-format=json --output="$out" \
	--name=cpu0 --filename="$dev" --cpus_allowed=0 --offset=0 \
	--name=cpu1 --filename="$dev" --cpus_allowed=1 --offset=32M 2>"$out.err"; then
	tail -n 5 "$out.err" >&2
	fail "2-queue verify failed"
fi
jq -r '.jobs[] | "2-queue \(.jobname): \(.write.io_bytes/1048576|floor) MiB written + verified, errors=\(.error)"' "$out"
[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "2-queue fio reported errors"
for h in 0 1; do
	d=/sys/kernel/debug/block/${dev#/dev/}/hctx$h/dispatched
	[ ! -r "$d" ] || log "hctx$h dispatched: $(tr '\n' ' ' <"$d")"
done
stop_bg dst3 TERM 20 || fail "2-queue dst did not exit cleanly"
wait_for_gone "$dev" 10

# 4. The other data paths: USER_COPY (data moved with pread/pwrite on
# /dev/ublkcN) and --buffered (through the backing file's page cache).
for opt in --user-copy --buffered; do
	run_bg dst4 "$DST" add file --path "$VMTEST_TMP/tmpfs.img" "$opt"
	dev=$(dst_device dst4)
	log "device with $opt: $dev"
	fio_verify "$dev" 4k 32
	fio_verify "$dev" 1m 8
	stop_bg dst4 TERM 20 || fail "dst $opt did not exit cleanly"
	wait_for_gone "$dev" 10
	! grep 'I/O error' "$VMTEST_TMP/dst4.log" || fail "dst $opt logged I/O errors"
done
for n in dst1 dst2 dst3; do
	! grep 'I/O error' "$VMTEST_TMP/$n.log" || fail "$n logged I/O errors"
done
log "file target fio verify OK"
