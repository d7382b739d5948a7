#!/bin/sh
# Smoke test of the harness itself (needs no dst): ublk_drv is loaded,
# loopback has IPv4 and IPv6, the copied tools start, and a loop device with
# direct I/O over a tmpfs file passes a fio crc32c verify job.
# timeout: 120
set -eu
. /tests/lib.sh

[ -c /dev/ublk-control ] || fail "/dev/ublk-control missing after modprobe ublk_drv"
log "ublk_drv loaded, /dev/ublk-control present"

ip -4 addr show dev lo | grep -q 'inet 127.0.0.1' || fail "lo has no 127.0.0.1"
ip -6 addr show dev lo | grep -q 'inet6 ::1' || fail "lo has no ::1"
ping -c 1 -W 2 127.0.0.1 >/dev/null || fail "ping 127.0.0.1 failed"
ping6 -c 1 -W 2 ::1 >/dev/null || fail "ping6 ::1 failed"

# Every dynamic tool must find its libraries (a missing .so fails here).
fio --version
mke2fs -V 2>&1 | head -n 1
e2fsck -V 2>&1 | head -n 1
/usr/sbin/losetup --version
blkdiscard --version
mdadm --version 2>&1
nbd-client --help 2>&1 | head -n 1 || true
nbd-server --version 2>&1 | head -n 1 || true
nbdkit --version
qemu-nbd --version | head -n 1
nbdinfo --version | head -n 1
jq --version
dd --version | head -n 1
ldd_missing=$(for b in fio mke2fs e2fsck losetup blkdiscard mdadm nbd-client nbd-server nbdkit qemu-nbd nbdinfo jq dd; do
	/lib64/ld-linux-x86-64.so.2 --list "$(command -v "$b")" | grep 'not found' || true
done)
[ -z "$ldd_missing" ] || fail "missing libraries: $ldd_missing"
for m in null_blk nbd md-mod raid1; do
	modinfo "$m" >/dev/null 2>&1 || fail "module $m not in the image"
done

mk_file "$VMTEST_TMP/backing" 64
dev=$(mk_loop "$VMTEST_TMP/backing" on)
[ "$(cat "/sys/block/${dev#/dev/}/loop/dio")" = 1 ] || fail "$dev: direct I/O not enabled"
log "$dev over tmpfs file, direct I/O on"
fio_verify "$dev" 4k 1
mke2fs -q -F -t ext4 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 "$dev"
e2fsck -f -n "$dev" >/dev/null || fail "e2fsck found errors on a fresh ext4"
log "harness OK"
