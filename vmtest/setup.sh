#!/usr/bin/env bash
# vmtest/setup.sh - idempotent host setup for the guest-VM test harness.
#
# Installs the Debian packages the harness needs (only when one is missing,
# and runs `apt-get update` only then), downloads the newest Debian bookworm
# Linux 6.12 kernel that has every needed block module, and extracts the
# kernel image plus the decompressed modules (and their dependencies) into
# the cache dir. A second run only verifies and takes well under a second.
#
# Env: DST_VM_CACHE (default <repo>/.cache/vm)
#      DST_VM_KERNEL_REFRESH=1  forget the cached kernel and pick the newest again
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${DST_VM_CACHE:-$REPO/.cache/vm}

# Debian packages: the VM, the initramfs tools, and the guest tools that are
# copied into the initramfs (fio, e2fsprogs, util-linux, mdadm, nbd, jq, and
# the NBD servers dst attach is tested against: nbdkit, qemu-nbd from
# qemu-utils, nbdinfo from libnbd-bin).
PKGS=(qemu-system-x86 busybox-static fio cpio xz-utils zstd kmod e2fsprogs
      util-linux mdadm nbd-client nbd-server jq nbdkit qemu-utils libnbd-bin)
# Modules every flavour choice must provide (as module or built in).
REQUIRED_MODULES=(ublk_drv null_blk nbd md-mod raid1 loop)
# Extracted too when present (small; handy for RAID scenarios).
OPTIONAL_MODULES=(raid0 raid10)
# Kernel flavours, in order of preference (cloud is 1/3 the download).
FLAVOURS=(cloud-amd64 amd64)

log() { echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install)"
mkdir -p "$CACHE"
exec 8>>"$CACHE/.setup.lock"   # concurrent runs: one installs, the others wait
flock 8

# ---------------------------------------------------------------- packages
APT_UPDATED=0
apt_update_once() {
	if [ "$APT_UPDATED" -eq 0 ]; then
		log "apt-get update"
		apt-get update -q >/dev/null
		APT_UPDATED=1
	fi
}

declare -A pkg_status=()
while read -r pkg status; do
	pkg_status[$pkg]=$status
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true)
missing=()
for p in "${PKGS[@]}"; do
	[ "${pkg_status[$p]:-}" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	apt_update_once
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}" >/dev/null
fi
for cmd in qemu-system-x86_64 cpio xz modinfo depmod fio jq nbdkit qemu-nbd nbdinfo; do
	command -v "$cmd" >/dev/null || die "$cmd not found after install"
done
[ -x /bin/busybox ] || die "/bin/busybox (busybox-static) missing"

# ------------------------------------------------------------------ kernel
KENV=$CACHE/kernel.env
want_mods="${REQUIRED_MODULES[*]} / ${OPTIONAL_MODULES[*]}"

kernel_ok() {
	[ -f "$KENV" ] || return 1
	# shellcheck disable=SC1090,SC2153  # KVER, MODFILES come from $KENV
	( . "$KENV"
	  [ "${WANT_MODS:-}" = "$want_mods" ] || exit 1
	  [ -s "$CACHE/vmlinuz" ] || exit 1
	  [ -f "$CACHE/root/lib/modules/$KVER/modules.dep" ] || exit 1
	  for f in $MODFILES; do [ -f "$CACHE/root/lib/modules/$KVER/$f" ] || exit 1; done )
}

if [ "${DST_VM_KERNEL_REFRESH:-0}" = 1 ]; then rm -f "$KENV"; fi
if kernel_ok; then
	# shellcheck disable=SC1090
	. "$KENV"
	log "ok: packages installed, kernel $KPKG cached in $CACHE"
	exit 0
fi

newest_pkg() { # flavour -> newest linux-image-6.12.* package name, or nothing
	apt-cache search --names-only "^linux-image-6\\.12\\.[0-9]+\\+deb12-$1-unsigned\$" \
		| awk '{print $1}' | sort -V | tail -n 1
}

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/.setup.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# find_mod TREE NAME -> path of NAME.ko[.xz|.zst] relative to TREE ("-" and "_" are equal)
find_mod() {
	local alt=${2//-/_} alt2=${2//_/-}
	(cd "$1" && find kernel \( -name "$alt.ko*" -o -name "$alt2.ko*" \) -print -quit)
}
# is_builtin TREE NAME
is_builtin() {
	local alt=${2//-/_} alt2=${2//_/-}
	grep -qE "/($alt|$alt2)\\.ko\$" "$1/modules.builtin" 2>/dev/null
}

chosen=""
for fl in "${FLAVOURS[@]}"; do
	pkg=$(newest_pkg "$fl")
	if [ -z "$pkg" ]; then apt_update_once; pkg=$(newest_pkg "$fl"); fi
	[ -n "$pkg" ] || { log "no linux-image-6.12.*-$fl-unsigned package found"; continue; }
	log "trying $pkg"
	rm -rf "$WORK/dl" "$WORK/x"; mkdir -p "$WORK/dl"
	if ! (cd "$WORK/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); then
		# stale package lists (the mirror retired that build): refresh, retry
		[ "$APT_UPDATED" -eq 0 ] || die "apt-get download $pkg failed"
		apt_update_once
		pkg=$(newest_pkg "$fl")
		log "retrying with $pkg"
		(cd "$WORK/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) \
			|| die "apt-get download $pkg failed"
	fi
	dpkg -x "$WORK"/dl/*.deb "$WORK/x"
	kver=$(basename "$(ls -d "$WORK"/x/lib/modules/*)")
	tree=$WORK/x/lib/modules/$kver
	ok=1
	for m in "${REQUIRED_MODULES[@]}"; do
		if [ -z "$(find_mod "$tree" "$m")" ] && ! is_builtin "$tree" "$m"; then
			log "$pkg lacks module $m"; ok=0
		fi
	done
	if [ "$ok" = 1 ]; then chosen=$pkg; break; fi
done
[ -n "$chosen" ] || die "no 6.12 kernel flavour has all of: ${REQUIRED_MODULES[*]}"

# Copy the wanted modules and, recursively, their dependencies, decompressed.
dest=$WORK/root/lib/modules/$kver
mkdir -p "$dest"
declare -A seen=()
modfiles=()
builtins=()
add_mod() {
	local m=$1 rel out deps d
	[ -z "${seen[$m]:-}" ] || return 0
	seen[$m]=1
	rel=$(find_mod "$tree" "$m")
	if [ -z "$rel" ]; then
		if is_builtin "$tree" "$m"; then builtins+=("$m"); return 0; fi
		return 1
	fi
	out=${rel%.xz}; out=${out%.zst}
	mkdir -p "$dest/$(dirname "$out")"
	case $rel in
	*.xz)  xz -dc "$tree/$rel" >"$dest/$out" ;;
	*.zst) zstd -qdc "$tree/$rel" >"$dest/$out" ;;
	*)     cp "$tree/$rel" "$dest/$out" ;;
	esac
	deps=$(modinfo -F depends "$dest/$out")
	for d in ${deps//,/ }; do add_mod "$d" || die "dependency $d of $m not found"; done
	modfiles+=("$out")
}
for m in "${REQUIRED_MODULES[@]}"; do add_mod "$m"; done
for m in "${OPTIONAL_MODULES[@]}"; do add_mod "$m" || log "optional module $m not in $chosen"; done
for f in modules.order modules.builtin modules.builtin.modinfo; do
	[ -f "$tree/$f" ] && cp "$tree/$f" "$dest/"
done
depmod -b "$WORK/root" "$kver"

rm -rf "$CACHE/root" "$CACHE/vmlinuz"
mv "$WORK/root" "$CACHE/root"
cp "$WORK/x/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
cp "$WORK/x/boot/config-$kver" "$CACHE/config"
{
	echo "KPKG=$chosen"
	echo "KVER=$kver"
	echo "MODFILES='${modfiles[*]}'"
	echo "BUILTIN_MODULES='${builtins[*]}'"
	echo "WANT_MODS='$want_mods'"
} >"$KENV.tmp"
mv "$KENV.tmp" "$KENV"
log "kernel $chosen ($kver) cached in $CACHE"
for f in "${modfiles[@]}"; do
	log "  module $(basename "$f" .ko) depends: [$(modinfo -F depends "$CACHE/root/lib/modules/$kver/$f")]"
done
[ ${#builtins[@]} -eq 0 ] || log "  built in: ${builtins[*]}"
