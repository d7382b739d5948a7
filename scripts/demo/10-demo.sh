#!/bin/sh
# The DST demo: a local exporter serves a 256 MiB file, `dst attach` turns
# it into /dev/ublkbN, and we use the device: a filesystem, a short fio
# run, and an exporter restart in the middle of writes that the filesystem
# never notices. Runs on a host with ublk, or inside the test guest.
# timeout: 300
set -eu
DST=${DST:-dst}
work=$(mktemp -d "${TMPDIR:-/tmp}/dst-demo.XXXXXX")
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	umount "$work/mnt" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
say() { printf '\n== %s\n' "$*"; }
wait_line() { # FILE REGEX: wait up to 30s for a line matching REGEX
	i=0
	until grep -qE "$2" "$1" 2>/dev/null; do
		i=$((i + 1)); [ $i -le 300 ] || { echo "demo: timed out waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
		sleep 0.1
	done
}
start_exporter() {
	"$DST" export --listen dst://127.0.0.1:10811 --export demo="$work/disk.img" \
		--allow 127.0.0.1/32=rw >"$work/export.out" 2>"$work/export.log" &
	exp=$!
	pids="$pids $exp"
	wait_line "$work/export.out" '^listening'
}

say "a 256 MiB file to export"
dd if=/dev/zero of="$work/disk.img" bs=1M count=0 seek=256 status=none
ls -l "$work/disk.img"

say "dst export --listen dst://127.0.0.1:10811 --export demo=disk.img --allow 127.0.0.1/32=rw"
start_exporter
cat "$work/export.out"

say "dst attach dst://127.0.0.1:10811/demo"
"$DST" attach --timeout 2s --retries 10 --ping 1s dst://127.0.0.1:10811/demo >"$work/attach.out" 2>"$work/attach.log" &
att=$!
pids="$pids $att"
wait_line "$work/attach.out" '^/dev/ublkb[0-9]+$'
dev=$(head -n 1 "$work/attach.out")
echo "device: $dev ($(blockdev --getsize64 "$dev") bytes)"
"$DST" list

say "ext4 on $dev"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=1 "$dev"
mkdir -p "$work/mnt"
mount "$dev" "$work/mnt"
dd if=/dev/urandom of="$work/mnt/data" bs=1M count=16 status=none
sum1=$(sha256sum <"$work/mnt/data" | cut -d' ' -f1)
echo "wrote 16 MiB, sha256 $sum1"

say "the exporter dies and comes back while we write"
dd if=/dev/urandom of="$work/mnt/more" bs=64k count=160 conv=fsync status=none &
writer=$!
sleep 0.5
kill -9 "$exp"
echo "exporter killed (SIGKILL); connection: $("$DST" list --json | sed -n 's/.*"conn": "\([a-z]*\)".*/\1/p' | head -n 1)"
sleep 2
start_exporter
echo "exporter restarted"
wait "$writer" && echo "the write finished without an error"
umount "$work/mnt"
e2fsck -fn "$dev" >/dev/null 2>&1 && echo "e2fsck: clean"
mount "$dev" "$work/mnt"
sum2=$(sha256sum <"$work/mnt/data" | cut -d' ' -f1)
[ "$sum1" = "$sum2" ] && echo "first file still reads back with sha256 $sum2"
umount "$work/mnt"

if command -v fio >/dev/null 2>&1; then
	say "fio: 4k random reads and writes at depth 32, 5 s each"
	for rw in randread randwrite; do
		fio --name=demo --filename="$dev" --ioengine=io_uring --direct=1 --rw=$rw --bs=4k \
			--iodepth=32 --runtime=5 --time_based --output-format=terse --terse-version=3 2>/dev/null |
			awk -F';' -v rw=$rw '{ if (rw == "randread") print rw ": " $8 " IOPS"; else print rw ": " $49 " IOPS" }'
	done
fi

say "detach (SIGTERM) and stop the exporter"
kill -TERM "$att"; wait "$att" || true
kill -TERM "$exp"; wait "$exp" || true
[ -e "$dev" ] && echo "device still there?" || echo "$dev is gone"
grep -E 'detached' "$work/attach.log" | sed 's/^[^{]*//' || true
echo
echo "demo OK"
