#!/bin/sh
# Network RAID: two exporters, two remote devices, an md RAID1 (mdadm) on
# top, ext4 on the array.
#  1. fio verify on the array while exporter A is killed and restarted
#     within the retry window: no member is marked faulty, fio passes.
#  2. exporter B is kept down past the retries: its member fails, the array
#     degrades and keeps serving; when B returns, the member is re-added
#     and resyncs; both members end equal and the files check out.
# timeout: 420
set -eu
. /tests/lib.sh
need_dst
need_cmd mdadm
load_module raid1

a=$VMTEST_TMP/a.img b=$VMTEST_TMP/b.img
mk_file "$a" 64
mk_file "$b" 64
start_exporter() { # NAME FILE PORT
	run_bg "$1" "$DST" export --listen "dst://127.0.0.1:$3" --export disk="$2" --allow 127.0.0.1/32=rw
	_i=0
	until grep -q listening "$VMTEST_TMP/$1.log"; do
		bg_alive "$1" || fail "exporter $1 exited: $(tail -n 2 "$VMTEST_TMP/$1.log")"
		_i=$((_i + 1)); [ $_i -le 400 ] || fail "exporter $1 did not start"; sleep 0.05
	done
}
attach() { # NAME PORT -> sets dev
	run_bg "$1" "$DST" attach --timeout 1s --retries 5 --ping 500ms "dst://127.0.0.1:$2/disk"
	_i=0
	until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/$1.log") && [ -b "$dev" ]; do
		bg_alive "$1" || fail "attach $1 exited"
		_i=$((_i + 1)); [ $_i -le 600 ] || fail "no device from $1"; sleep 0.05
	done
}
member_state() { # DEV: md's state of the member (in_sync, faulty, ...)
	cat "/sys/block/md0/md/dev-${1#/dev/}/state" 2>/dev/null || echo removed
}

start_exporter expA "$a" 10811
start_exporter expB "$b" 10812
attach attA 10811; devA=$dev
attach attB 10812; devB=$dev
log "members $devA $devB"
# --failfast: a member whose write failed (after dst's retries ran out) is
# failed at once; without it md narrows the write sector by sector to
# record bad blocks, and each of those waits out the retries again.
mdadm --create /dev/md0 --run --quiet --level=1 --raid-devices=2 --metadata=1.2 \
	--bitmap=internal --assume-clean --failfast "$devA" "$devB" >"$VMTEST_TMP/mdadm.log" 2>&1 ||
	fail "mdadm --create: $(cat "$VMTEST_TMP/mdadm.log")"
log "$(grep -A1 '^md0' /proc/mdstat | tr -s ' ' | tr '\n' ' ')"

# 1. A short outage of A under fio verify: the array must not degrade.
eng=$(fio_engine)
fio --name=raid --filename=/dev/md0 --ioengine="$eng" --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
	--size=24M --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
	--output-format=json --output="$VMTEST_TMP/fio1.json" >"$VMTEST_TMP/fio1.err" 2>&1 &
fio_pid=$!
sleep 2
stop_bg expA KILL 5 || true
log "exporter A killed"
sleep 1.5
start_exporter expA2 "$a" 10811
log "exporter A back"
wait "$fio_pid" || { tail -n 20 "$VMTEST_TMP/fio1.err"; fail "fio on the array failed during a short outage"; }
[ "$(jq '.jobs[0].error' "$VMTEST_TMP/fio1.json")" = 0 ] || fail "fio reported errors"
sA=$(member_state "$devA"); sB=$(member_state "$devB")
report "after the short outage: $devA $sA, $devB $sB"
case "$sA$sB" in *faulty*|*removed*) fail "a member was failed by a short outage: $devA $sA, $devB $sB" ;; esac
grep -q '\[UU\]' /proc/mdstat || fail "array degraded after a short outage: $(cat /proc/mdstat)"

# 2. B down past the retries: its member fails, the array keeps serving.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=1 /dev/md0
mkdir -p "$VMTEST_TMP/mnt"
mount /dev/md0 "$VMTEST_TMP/mnt"
dd if=/dev/urandom of="$VMTEST_TMP/mnt/one" bs=64k count=64 status=none
sync
stop_bg expB KILL 5 || true
log "exporter B killed for good"
# Writes reach B, fail after timeout x (retries+1), md fails the member.
dd if=/dev/urandom of="$VMTEST_TMP/mnt/two" bs=64k count=64 conv=fsync status=none ||
	fail "writes to the degraded array failed"
i=0
until [ "$(member_state "$devB")" != in_sync ]; do
	i=$((i + 1)); [ $i -le 300 ] || fail "member $devB never failed: $(member_state "$devB")"; sleep 0.1
done
log "member $devB: $(member_state "$devB"); $(grep -A1 '^md0' /proc/mdstat | tail -n 1 | tr -s ' ')"
grep -q '\[U_\]' /proc/mdstat || fail "array not degraded as expected: $(cat /proc/mdstat)"
(cd "$VMTEST_TMP/mnt" && sha256sum one two) >"$VMTEST_TMP/sums"
dd if=/dev/urandom of="$VMTEST_TMP/mnt/three" bs=64k count=32 conv=fsync status=none
(cd "$VMTEST_TMP/mnt" && sha256sum three) >>"$VMTEST_TMP/sums"

# B returns: the client reconnects by itself; re-add the member, resync.
start_exporter expB2 "$b" 10812
i=0
until "$DST" list --json | jq -e --arg d "$devB" '.[] | select(.path == $d and .conn == "up")' >/dev/null; do
	i=$((i + 1)); [ $i -le 300 ] || fail "attach B did not reconnect: $("$DST" list)"; sleep 0.1
done
mdadm /dev/md0 --remove "$devB" >/dev/null 2>&1 || true
mdadm /dev/md0 --re-add --failfast "$devB" >"$VMTEST_TMP/readd.log" 2>&1 ||
	mdadm /dev/md0 --add --failfast "$devB" >>"$VMTEST_TMP/readd.log" 2>&1 ||
	fail "could not re-add $devB: $(cat "$VMTEST_TMP/readd.log")"
i=0
until grep -q '\[UU\]' /proc/mdstat && ! grep -q recovery /proc/mdstat; do
	i=$((i + 1)); [ $i -le 600 ] || fail "resync did not finish: $(cat /proc/mdstat)"; sleep 0.2
done
report "resynced: $(grep -A1 '^md0' /proc/mdstat | tail -n 1 | tr -s ' ')"
(cd "$VMTEST_TMP/mnt" && sha256sum -c "$VMTEST_TMP/sums") >/dev/null || fail "files differ after resync"
umount "$VMTEST_TMP/mnt"
e2fsck -fn /dev/md0 >/dev/null 2>&1 || fail "e2fsck on the array is not clean"
mdadm --stop /dev/md0 >/dev/null
# The members must hold the same data (past the superblock and bitmap,
# which differ by design).
off=$(mdadm --examine "$devA" | awk '/Data Offset/ {print $4}')
[ $((off % 128)) = 0 ] || fail "data offset $off sectors is not 64 KiB aligned"
sumA=$(dd if="$devA" bs=64k skip=$((off / 128)) iflag=direct status=none | sha256sum)
sumB=$(dd if="$devB" bs=64k skip=$((off / 128)) iflag=direct status=none | sha256sum)
[ "$sumA" = "$sumB" ] || fail "members differ after the resync"
stop_bg attA TERM 30 || true
stop_bg attB TERM 30 || true
report "RAID1 over two remote devices: survived a short outage undegraded, degraded and resynced after a long one"
