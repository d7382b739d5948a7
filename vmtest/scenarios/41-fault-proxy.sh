#!/bin/sh
# fio crc32c verify (4k random, 64k sequential, depth 16) on a remote
# device attached through `dst proxy`, which cuts every connection 3 s
# after it opens, partitions it for 0.5 s before that, delays every frame
# (0.2 ms + up to 0.8 ms) and reorders 5% of the frames both ways, seeded
# by FAULT_SEED. fio must exit 0 with zero errors, the proxy must have
# injected the faults and stop cleanly on SIGTERM. Then, with crc32c
# checksums on both sides, a proxy that flips bits (2% of the chunks it
# forwards, either way, headers included): fio verify must still see
# only its own data.
# timeout: 240
set -eu
. /tests/lib.sh
# shellcheck source=5-recover-lib.sh
. /tests/scenarios/5-recover-lib.sh
# shellcheck source=4-fault-lib.sh
. /tests/scenarios/4-fault-lib.sh
need_dst
fault_init 48
start_exporter exp
run_bg proxy "$DST" proxy --listen dst://127.0.0.1:10812 --to dst://127.0.0.1:10811 --seed "$FAULT_SEED" \
	--cut-every 3s --partition-every 1500ms --partition-for 500ms \
	--delay 200us --jitter 800us --reorder 0.05
i=0
until grep -q '^listening ' "$VMTEST_TMP/proxy.log"; do
	bg_alive proxy || fail "dst proxy exited: $(tail -n 2 "$VMTEST_TMP/proxy.log")"
	i=$((i + 1)); [ $i -le 200 ] || fail "dst proxy did not listen within 10s"; sleep 0.05
done
run_bg att "$DST" attach --timeout 2s --retries 15 --ping 1s dst://127.0.0.1:10812/disk
dev=$(dev_of att)

t0=$(now)
fio_bg 1 "$dev" 8M
fio_check 1
fio_bg 2 "$dev" 16M --rw=write --bs=64k
fio_check 2
took=$(secs "$t0" "$(now)")
stop_bg att TERM 30 || fail "dst attach did not exit cleanly"
stop_bg proxy TERM 10 || fail "dst proxy did not exit 0 on SIGTERM"
stop_bg exp TERM 30 || true

count() { grep -c "fault injected.*\"kind\": \"$1\"" "$VMTEST_TMP/proxy.log" || true; }
cuts=$(count cut) parts=$(count partition) reorders=$(count reorder)
lost=$(grep -c 'connection lost' "$VMTEST_TMP/att.log" || true)
grep -q 'proxy stopped' "$VMTEST_TMP/proxy.log" || fail "no 'proxy stopped' line"
[ "$cuts" -ge 2 ] || fail "the proxy cut $cuts connections in ${took}s (every 3s)"
[ "$reorders" -ge 1 ] || fail "the proxy reordered no frame"
[ "$lost" -ge 2 ] || fail "the client log shows $lost lost connections"
report "fio verify through dst proxy (seed $FAULT_SEED) in ${took}s: 2 runs, zero errors; faults: $cuts cuts, $parts partitions, $reorders reorders, every frame delayed; client: $lost connections lost; $(attach_stats att)"

# Bit flips with checksums on.
start_exporter exp2 --checksum crc32c
run_bg proxy2 "$DST" proxy --listen dst://127.0.0.1:10813 --to dst://127.0.0.1:10811 --seed "$FAULT_SEED" --corrupt 0.02
i=0
until grep -q '^listening ' "$VMTEST_TMP/proxy2.log"; do
	bg_alive proxy2 || fail "dst proxy exited: $(tail -n 2 "$VMTEST_TMP/proxy2.log")"
	i=$((i + 1)); [ $i -le 200 ] || fail "dst proxy did not listen within 10s"; sleep 0.05
done
run_bg att2 "$DST" attach --checksum crc32c --timeout 2s --retries 15 --ping 1s dst://127.0.0.1:10813/disk
dev=$(dev_of att2)
t0=$(now)
fio_bg 3 "$dev" 8M
fio_check 3
took=$(secs "$t0" "$(now)")
stop_bg att2 TERM 30 || fail "dst attach --checksum did not exit cleanly"
stop_bg proxy2 TERM 10 || fail "dst proxy did not exit 0 on SIGTERM"
stop_bg exp2 TERM 30 || true
flips=$(grep -c 'fault injected.*"kind": "corrupt"' "$VMTEST_TMP/proxy2.log" || true)
[ "$flips" -ge 1 ] || fail "the proxy flipped no bit"
report "fio verify with crc32c checksums through bit flips (seed $FAULT_SEED) in ${took}s: zero errors; $flips bits flipped; client: $(grep -c 'connection lost' "$VMTEST_TMP/att2.log" || true) connections lost; $(attach_stats att2)"
