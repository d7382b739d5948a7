#!/bin/sh
# Checksums and channel encryption (docs/PROTOCOL.md §8) on real devices: a
# remote device with each checksum (crc32c, sha256, blake3) and each cipher
# (aes-256-gcm, chacha20-poly1305, key from dst keygen) passes fio crc32c
# verify; a cipher or key mismatch is refused at attach with the reason on
# both sides; through `dst proxy --corrupt` (bits flipped in both
# directions) fio verify still passes with a checksum (corrupted frames
# dropped and resent, never written) and with a cipher (connection closed
# and re-established).
# timeout: 240
set -eu
. /tests/lib.sh
need_dst

backing=$VMTEST_TMP/export.img
mk_file "$backing" 32
key=$VMTEST_TMP/dst.key
other=$VMTEST_TMP/other.key
"$DST" keygen "$key" >/dev/null || fail "dst keygen failed"
"$DST" keygen "$other" >/dev/null || fail "dst keygen failed"
[ "$(stat -c %a "$key")" = 600 ] || fail "dst keygen wrote mode $(stat -c %a "$key"), want 600"
"$DST" keygen "$key" >/dev/null 2>&1 && fail "dst keygen overwrote an existing key file"

# exporter NAME PORT ARGS...: dst export of $backing as "disk" on PORT.
exporter() {
	_n=$1 _port=$2; shift 2
	run_bg "$_n" "$DST" export --listen "dst://127.0.0.1:$_port" --export disk="$backing" --allow 127.0.0.1/32=rw "$@"
	_i=0
	until grep -q '^listening ' "$VMTEST_TMP/$_n.log"; do
		bg_alive "$_n" || fail "exporter $_n exited: $(tail -n 2 "$VMTEST_TMP/$_n.log")"
		_i=$((_i + 1)); [ $_i -le 400 ] || fail "exporter $_n did not listen within 20s"
		sleep 0.05
	done
}

# attach NAME URL ARGS...: dst attach in the background (--timeout and
# --retries from ATTACH_RETRY); sets dev.
attach() {
	_n=$1 _url=$2; shift 2
	# shellcheck disable=SC2086 # ATTACH_RETRY is a list of arguments
	run_bg "$_n" "$DST" attach ${ATTACH_RETRY:---timeout 2s --retries 20} "$@" "$_url"
	_i=0
	until dev=$(grep -m 1 -E '^/dev/ublkb[0-9]+$' "$VMTEST_TMP/$_n.log") && [ -b "$dev" ]; do
		bg_alive "$_n" || fail "dst attach $* exited: $(tail -n 2 "$VMTEST_TMP/$_n.log")"
		_i=$((_i + 1)); [ $_i -le 600 ] || fail "dst attach $* showed no device within 30s"
		sleep 0.05
	done
}

# detach NAME: stop dst attach NAME cleanly and wait for its device to go.
detach() {
	stop_bg "$1" TERM 30 || fail "dst attach $1 did not exit cleanly after SIGTERM"
	wait_for_gone "$dev" 10
}

port=10820
for suite in "--checksum crc32c" "--checksum sha256" "--checksum blake3" \
	"--cipher aes-256-gcm --key-file $key" "--cipher chacha20-poly1305 --key-file $key"; do
	port=$((port + 1))
	# shellcheck disable=SC2086 # $suite is a list of arguments
	exporter exp$port $port $suite
	# shellcheck disable=SC2086
	attach att$port "dst://127.0.0.1:$port/disk" $suite
	FIO_VERIFY_SIZE=4M fio_verify "$dev" 4k 16 || fail "fio verify with $suite"
	name=$(echo "$suite" | awk '{print $2}')
	grep -q "\"crypto\": \"$name\"" "$VMTEST_TMP/att$port.log" ||
		fail "dst attach does not log the suite $suite: $(grep -m 1 connected "$VMTEST_TMP/att$port.log")"
	detach att$port
	stop_bg exp$port TERM 30 || fail "dst export ($suite) did not exit cleanly"
	log "$suite: fio verify OK"
done

# Refusals: the attach fails at once with the reason; the exporter logs it.
exporter expref 10830 --cipher chacha20-poly1305 --key-file "$key"
if out=$("$DST" attach --cipher aes-256-gcm --key-file "$key" dst://127.0.0.1:10830/disk 2>&1); then
	fail "attach with another cipher succeeded"
fi
echo "$out" | grep -q "the client asks for aes-256-gcm, this exporter is configured for chacha20-poly1305" ||
	fail "cipher mismatch: dst attach says: $out"
if out=$("$DST" attach --cipher chacha20-poly1305 --key-file "$other" dst://127.0.0.1:10830/disk 2>&1); then
	fail "attach with another key succeeded"
fi
echo "$out" | grep -q "key confirmation failed: the exporter does not hold the same key" ||
	fail "wrong key: dst attach says: $out"
if out=$("$DST" attach dst://127.0.0.1:10830/disk 2>&1); then
	fail "attach without crypto to an exporter that requires it succeeded"
fi
echo "$out" | grep -q "this exporter requires chacha20-poly1305; the client offered no crypto" ||
	fail "no crypto: dst attach says: $out"
grep -q "does not hold this exporter's key" "$VMTEST_TMP/expref.log" ||
	fail "the exporter does not log the key mismatch: $(tail -n 3 "$VMTEST_TMP/expref.log")"
[ -z "$(ls /dev/ublkb* 2>/dev/null)" ] || fail "a refused attach left a device: $(ls /dev/ublkb*)"
stop_bg expref TERM 30 || fail "dst export (refusals) did not exit cleanly"
log "refusals (cipher, key, crypto missing): OK"

# Through a proxy that flips bits in both directions.
for suite in "--checksum crc32c" "--cipher aes-256-gcm --key-file $key"; do
	port=$((port + 1))
	# shellcheck disable=SC2086
	exporter expc$port $port $suite
	run_bg proxy$port "$DST" proxy --listen dst://127.0.0.1:$((port + 100)) --to "dst://127.0.0.1:$port" \
		--seed "$port" --corrupt 0.02
	_i=0
	until grep -q '^listening ' "$VMTEST_TMP/proxy$port.log"; do
		bg_alive proxy$port || fail "dst proxy exited: $(tail -n 2 "$VMTEST_TMP/proxy$port.log")"
		_i=$((_i + 1)); [ $_i -le 400 ] || fail "dst proxy did not listen within 20s"
		sleep 0.05
	done
	# shellcheck disable=SC2086
	ATTACH_RETRY="--timeout 1s --retries 60" attach attc$port "dst://127.0.0.1:$((port + 100))/disk" $suite
	FIO_VERIFY_SIZE=2M fio_verify "$dev" 4k 8 || fail "fio verify through a corrupting proxy with $suite"
	detach attc$port
	flips=$(grep -c 'corrupt' "$VMTEST_TMP/proxy$port.log" || true)
	stats=$(grep -m 1 'detached' "$VMTEST_TMP/attc$port.log" | grep -o '"[a-z]*": [0-9]*' | tr -d '"' | paste -sd' ' -)
	stop_bg proxy$port TERM 10 || true
	stop_bg expc$port TERM 30 || fail "dst export ($suite, proxy) did not exit cleanly"
	[ "$flips" -gt 0 ] || fail "the proxy flipped no bit: the run did not test anything"
	report "${suite%% --key-file*} through dst proxy --corrupt 0.02: fio verify OK ($flips bits flipped; $stats)"
done
log "crypto: OK"
