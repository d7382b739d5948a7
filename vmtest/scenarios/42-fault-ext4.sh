#!/bin/sh
# ext4 on a remote device survives exporter crashes: a file tree is
# written and synced; then, while a second tree is being written, the
# exporter is SIGKILLed and restarted (after FAULT_SEED-chosen pauses)
# twice. Both trees are synced, the page cache dropped, read back from the
# device and compared (sha256sum); the filesystem must then be clean
# (e2fsck -fn).
# timeout: 180
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
# shellcheck source=4-fault-lib.sh
. /tests/scenarios/4-fault-lib.sh
need_dst
fault_init 96
start_exporter exp0
run_bg att "$DST" attach --timeout 2s --retries 15 --ping 1s dst://127.0.0.1:10811/disk
dev=$(dev_of att)
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=1 "$dev" || fail "mkfs.ext4 on $dev failed"
mnt=$VMTEST_TMP/mnt
mkdir -p "$mnt"
mount -t ext4 "$dev" "$mnt" || fail "mount failed"
on_exit "umount $mnt 2>/dev/null"

# tree DIR N [DD ARGS]: N directories of files of 4 KiB to 1 MiB of
# random data.
tree() {
	_t=$1 _n=$2; shift 2
	for _d in $(seq 1 "$_n"); do
		mkdir -p "$_t/d$_d"
		for _f in 1 2 3 4 5 6; do
			dd if=/dev/urandom of="$_t/d$_d/f$_f" bs=4k count=$(((_d * 7 + _f * 13) % 256 + 1)) status=none "$@"
		done
	done
}
tree "$mnt/a" 6
sync
log "tree a written and synced: $(du -sk "$mnt/a" | cut -f1) KiB"

# Each file of tree b is fsynced, so the device is busy when the kills come.
tree "$mnt/b" 10 conv=fsync &
writer=$!
exp=exp0
for r in 1 2; do
	sleep "$(rand_in 0.5 2 "$r")"
	stop_bg "$exp" KILL 5 || true
	t_kill=$(now)
	sleep "$(rand_in 0.3 1.5 $((r + 10)))"
	exp=exp$r
	start_exporter "$exp"
	t_up=$(now)
	# The client must be connected to this exporter before the next kill.
	i=0
	until [ "$(grep -c '"resumed"' "$VMTEST_TMP/att.log")" -ge "$r" ]; do
		i=$((i + 1)); [ $i -le 400 ] || fail "the client did not reconnect within 20s of round $r"; sleep 0.05
	done
	log "round $r: exporter killed at $t_kill, up again at $t_up, client reconnected at $(now)"
done
wait "$writer" || fail "writing tree b failed across exporter restarts"
sync
t_sum=$(now)
(cd "$mnt" && find a b -type f | sort | xargs sha256sum) >"$VMTEST_TMP/sums"
echo 3 >/proc/sys/vm/drop_caches
(cd "$mnt" && sha256sum -c "$VMTEST_TMP/sums") >"$VMTEST_TMP/check" 2>&1 || {
	grep -v ': OK$' "$VMTEST_TMP/check" | head -n 5
	fail "files differ when read back from the device"
}
files=$(wc -l <"$VMTEST_TMP/sums")
umount "$mnt"
e2fsck -fn "$dev" >"$VMTEST_TMP/fsck" 2>&1 || { tail -n 20 "$VMTEST_TMP/fsck"; fail "e2fsck -fn found problems"; }
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
stop_bg "$exp" TERM 30 || true
lost=$(grep -c 'connection lost' "$VMTEST_TMP/att.log" || true)
[ "$lost" -ge 2 ] || fail "the client log shows $lost lost connections for 2 kills"
report "ext4: $files files (2 trees) read back equal after 2 exporter SIGKILLs during writes (checked in $(secs "$t_sum" "$(now)")s); e2fsck -fn clean; client: $lost connections lost; $(attach_stats att)"
