#!/usr/bin/env bash
# vmtest/mkinitramfs.sh - build the guest initramfs (uncompressed newc cpio).
#
# The image is two concatenated cpio archives (the kernel unpacks both):
#   base.cpio    busybox + applet links, kernel modules, the dynamic guest
#                tools (fio, mke2fs, e2fsck, losetup, blkdiscard, mdadm,
#                nbd-client, nbd-server, nbdkit with its memory and file
#                plugins, qemu-nbd, nbdinfo, jq, GNU dd) with every library
#                ldd lists and the loader. Cached in $DST_VM_CACHE and rebuilt
#                only when this script, the kernel or the installed packages
#                change.
#   overlay      /init, /tests (run-all.sh, lib.sh, scenarios/, bench/,
#                vmtest.env) and the extra files (-> /usr/local/bin).
#                Rebuilt every run (small).
#
# Usage: mkinitramfs.sh [-o OUT] [--scenarios DIR] [--bench DIR]
#                       [--env NAME=VALUE]... [--extra FILE[:GUESTPATH]]... [FILE[:GUESTPATH]...]
#   Extra files (args, --extra, or the space-separated env var VMTEST_EXTRA)
#   land in /usr/local/bin/<basename> unless :GUESTPATH is given. Dynamic
#   binaries get their libraries too; static Go binaries need nothing else.
#   --env lines are written to /tests/vmtest.env, sourced by run-all.sh.
# Prints the output path (default $DST_VM_CACHE/initramfs.cpio) on stdout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${DST_VM_CACHE:-$REPO/.cache/vm}
OUT=$CACHE/initramfs.cpio
SCEN=$HERE/scenarios
BENCH=$HERE/bench
extras=()
envs=()

while [ $# -gt 0 ]; do
	case $1 in
	-o) OUT=$2; shift 2 ;;
	--scenarios) SCEN=$2; shift 2 ;;
	--bench) BENCH=$2; shift 2 ;;
	--env) envs+=("$2"); shift 2 ;;
	--extra) extras+=("$2"); shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "mkinitramfs: unknown option $1" >&2; exit 2 ;;
	*) extras+=("$1"); shift ;;
	esac
done
# shellcheck disable=SC2206
[ -z "${VMTEST_EXTRA:-}" ] || extras+=(${VMTEST_EXTRA})

die() { echo "mkinitramfs: ERROR: $*" >&2; exit 1; }
[ -f "$CACHE/kernel.env" ] || die "no kernel in $CACHE: run vmtest/setup.sh first"
# shellcheck disable=SC1091
. "$CACHE/kernel.env"

# Tools copied into the guest, by host path lookup. Inside the guest they
# come before the busybox applet links (/bin) in PATH. /bin/sh is dash:
# busybox-static's own sh and its launcher applets (env, timeout, xargs,
# setsid, ...) always run a busybox applet of the same name instead of the
# program on PATH, so e.g. `losetup` would be busybox's (no --direct-io).
# Hence dash, and the real launchers.
TOOLS=(fio mke2fs mkfs.ext4 e2fsck losetup blkdiscard mdadm nbd-client nbd-server jq
       dd dash timeout env nohup xargs setsid taskset unshare nsenter
       nbdkit qemu-nbd nbdinfo)
# glibc dlopens libgcc_s for pthread_cancel/unwinding; not in ldd output.
DLOPEN_LIBS=(libgcc_s.so.1)
# nbdkit dlopens its plugins (and filters) from its plugindir/filterdir:
# only these few are copied, with their libraries.
NBDKIT_PLUGINS=(memory file)
NBDKIT_FILTERS=()

ROOT=""
# add_file HOSTPATH: copy a file (or symlink chain) to the same canonical
# path under $ROOT; directories are canonicalised so /lib/x -> /usr/lib/x.
add_file() {
	local p=$1 dir t
	dir=$(readlink -f "$(dirname "$p")")
	p=$dir/$(basename "$p")
	if [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ]; then return 0; fi
	mkdir -p "$ROOT$dir"
	if [ -L "$p" ]; then
		cp -P "$p" "$ROOT$p"
		t=$(readlink "$p")
		case $t in /*) ;; *) t=$dir/$t ;; esac
		add_file "$t"
	else
		cp -p "$p" "$ROOT$p"
	fi
}
# add_libs BINARY: the libraries and loader ldd lists (nothing for static).
add_libs() {
	local l
	while read -r l; do add_file "$l"; done < <(ldd "$1" 2>/dev/null \
		| awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
cpio_dir() { # DIR OUTFILE
	(cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
		| cpio -o -0 -H newc -R 0:0 --quiet) >"$2"
}

mkdir -p "$CACHE" "$(dirname "$OUT")"
STAGE=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# ------------------------------------------------------------- base image
tool_paths=()
for t in "${TOOLS[@]}"; do
	p=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$t") || die "$t not installed (run vmtest/setup.sh)"
	tool_paths+=("$p")
done
dlopen_paths=()
nbdkit_dir() { nbdkit --dump-config | sed -n "s/^$1=//p"; }
for n in "${NBDKIT_PLUGINS[@]}"; do
	p=$(nbdkit_dir plugindir)/nbdkit-$n-plugin.so
	[ -f "$p" ] || die "nbdkit plugin $p not installed"
	dlopen_paths+=("$p")
done
for n in "${NBDKIT_FILTERS[@]}"; do
	p=$(nbdkit_dir filterdir)/nbdkit-$n-filter.so
	[ -f "$p" ] || die "nbdkit filter $p not installed"
	dlopen_paths+=("$p")
done
key=$( {
	sha256sum <"$0"
	cat "$CACHE/kernel.env"
	stat -c '%n %s %Y' /var/lib/dpkg/status /bin/busybox "${tool_paths[@]}" "${dlopen_paths[@]}"
} | sha256sum | cut -d' ' -f1)
BASE=$CACHE/base.cpio
if [ ! -s "$BASE" ] || [ "$(cat "$BASE.key" 2>/dev/null)" != "$key" ]; then
	ROOT=$STAGE/base
	mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,run,etc,root,mnt,usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin}
	ln -s usr/lib "$ROOT/lib"
	ln -s usr/lib64 "$ROOT/lib64"
	ln -s usr/sbin "$ROOT/sbin"
	mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true
	mknod -m 666 "$ROOT/dev/null" c 1 3 2>/dev/null || true
	cp /bin/busybox "$ROOT/bin/busybox"
	for a in $(/bin/busybox --list); do
		case $a in busybox|sh) ;; *) ln -s busybox "$ROOT/bin/$a" ;; esac
	done
	ln -s ../usr/bin/dash "$ROOT/bin/sh"
	for p in "${tool_paths[@]}" "${dlopen_paths[@]}"; do add_file "$p"; add_libs "$p"; done
	for l in "${DLOPEN_LIBS[@]}"; do
		p=$(ldconfig -p | awk -v l="$l" '$1 == l && /x86-64/ {print $NF; exit}')
		[ -z "$p" ] || add_file "$p"
	done
	cp -a "$CACHE/root/lib/modules" "$ROOT/usr/lib/"
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
	printf 'root:x:0:0:root:/root:/bin/sh\nnbd:x:100:100:nbd:/tmp:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOT/etc/passwd"
	printf 'root:x:0:\nnbd:x:100:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
	printf 'passwd: files\ngroup: files\nhosts: files\nservices: files\n' >"$ROOT/etc/nsswitch.conf"
	[ ! -f /etc/services ] || cp /etc/services "$ROOT/etc/services"
	ln -sf /proc/self/mounts "$ROOT/etc/mtab"
	mkdir -p "$ROOT/etc/mdadm"
	echo "# generated by vmtest" >"$ROOT/etc/mdadm/mdadm.conf"
	cpio_dir "$ROOT" "$BASE.tmp"
	mv "$BASE.tmp" "$BASE"
	echo "$key" >"$BASE.key"
	echo "mkinitramfs: built base image $(du -m "$BASE" | cut -f1) MiB" >&2
fi

# ---------------------------------------------------------------- overlay
ROOT=$STAGE/overlay
mkdir -p "$ROOT/tests" "$ROOT/usr/local/bin"
install -m 755 "$HERE/init" "$ROOT/init"
install -m 755 "$HERE/run-all.sh" "$ROOT/tests/run-all.sh"
install -m 644 "$HERE/lib.sh" "$ROOT/tests/lib.sh"
[ ! -d "$SCEN" ] || cp -a "$SCEN" "$ROOT/tests/scenarios"
[ ! -d "$BENCH" ] || cp -a "$BENCH" "$ROOT/tests/bench"
{
	echo "# generated by mkinitramfs.sh"
	echo "VMTEST_KVER='$KVER'"
	for e in "${envs[@]}"; do
		case $e in
		[A-Za-z_]*=*) printf "export %s='%s'\n" "${e%%=*}" "${e#*=}" ;;
		*) die "--env wants NAME=VALUE, got '$e'" ;;
		esac
	done
} >"$ROOT/tests/vmtest.env"
for x in "${extras[@]}"; do
	src=${x%%:*}
	dst=/usr/local/bin/$(basename "$src")
	[ "$src" = "$x" ] || dst=${x#*:}
	[ -e "$src" ] || die "extra file $src does not exist"
	mkdir -p "$ROOT$(dirname "$dst")"
	cp -a "$src" "$ROOT$dst"
	if [ -f "$src" ] && [ -x "$src" ] && ldd "$src" >/dev/null 2>&1; then
		echo "mkinitramfs: note: $src is dynamically linked; copying its libraries" >&2
		add_libs "$src"
	fi
done
cpio_dir "$ROOT" "$STAGE/overlay.cpio"
cat "$BASE" "$STAGE/overlay.cpio" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
