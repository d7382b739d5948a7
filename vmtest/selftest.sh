#!/usr/bin/env bash
# vmtest/selftest.sh - check the harness itself: PASS/FAIL/SKIP/timeout
# reporting, the exit status of run.sh, lib.sh daemon handling, --tests
# selection, and static Go binaries (a program and a `go test -c` binary,
# built in a temp dir, when Go is installed) as --extra files.
# Scenarios are generated in a temp dir; nothing here is part of the suite.
# Takes two VM boots (about 30-40 s on an idle machine).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
S=$T/scenarios
mkdir -p "$S"
OUT=${VMTEST_OUT:-$HERE/out}
export VMTEST_OUT=$OUT

cat >"$S/10-pass.sh" <<'X'
#!/bin/sh
set -eu
. /tests/lib.sh
run_bg sleeper sleep 1000
bg_alive sleeper || fail "sleeper not running"
rc=0; stop_bg sleeper TERM 5 || rc=$?
[ "$rc" -eq 143 ] || fail "stop_bg sleeper: want 143, got $rc"
on_exit 'touch /tmp/vmtest/hook-ran'
wait_for_file /proc/self 1
if wait_for_file /nonexistent 0 2>/dev/null; then fail "wait_for_file found /nonexistent"; fi
[ "$(pwd)" = "$VMTEST_TMP" ] || fail "cwd $(pwd) is not VMTEST_TMP $VMTEST_TMP"
[ "$VMTEST_NAME" = 10-pass ] || fail "VMTEST_NAME=$VMTEST_NAME"
[ "$(readlink -f /bin/sh)" = /usr/bin/dash ] || fail "/bin/sh is not dash"
/usr/sbin/losetup --version | grep -q util-linux || fail "losetup is not util-linux's"
command -v losetup | grep -q '^/usr/sbin/' || fail "losetup on PATH is $(command -v losetup)"
X
cat >"$S/15-hook.sh" <<'X'
#!/bin/sh
set -eu
[ -e /tmp/vmtest/hook-ran ] || { echo "ERROR: on_exit hook of 10-pass did not run"; exit 1; }
X
cat >"$S/20-fail.sh" <<'X'
#!/bin/sh
set -eu
. /tests/lib.sh
run_bg chatty sh -c 'echo daemon-says-hi; sleep 1000'
sleep 0.5
echo "before the failure"
fail "deliberate failure"
X
cat >"$S/30-skip.sh" <<'X'
#!/bin/sh
. /tests/lib.sh
skip "deliberate skip"
X
cat >"$S/40-hang.sh" <<'X'
#!/bin/sh
# timeout: 3
. /tests/lib.sh
run_bg leftover sleep 1000
echo "hanging now"
sleep 1000
X
cat >"$S/50-clean.sh" <<'X'
#!/bin/sh
# the daemons of 20-fail and 40-hang must be gone
if ps -o args | grep -E '^(sleep 1000|sh -c echo daemon)' ; then echo "ERROR: leftover processes"; exit 1; fi
X
cat >"$S/60-go.sh" <<'X'
#!/bin/sh
set -eu
. /tests/lib.sh
[ -x /usr/local/bin/hello ] || skip "no Go toolchain on the host"
/usr/local/bin/hello
/opt/probe/probe.test -test.v
X
chmod +x "$S"/*.sh

extras=()
GO=$(command -v go || echo /usr/local/go/bin/go)
if [ -x "$GO" ]; then
	mkdir -p "$T/hello" "$T/probe"
	printf 'module hello\n' >"$T/hello/go.mod"
	cat >"$T/hello/main.go" <<'X'
package main

import (
	"fmt"
	"os"
)

func main() {
	f, err := os.OpenFile("/dev/ublk-control", os.O_RDWR, 0)
	if err != nil {
		fmt.Println("ERROR: open /dev/ublk-control:", err)
		os.Exit(1)
	}
	f.Close()
	fmt.Println("static Go binary runs; /dev/ublk-control opens")
}
X
	printf 'module probe\n' >"$T/probe/go.mod"
	cat >"$T/probe/probe_test.go" <<'X'
package probe

import (
	"net"
	"testing"
)

func TestLoopback(t *testing.T) {
	for _, a := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		l.Close()
	}
}
X
	(cd "$T/hello" && CGO_ENABLED=0 "$GO" build -o "$T/hello.bin" .)
	(cd "$T/probe" && CGO_ENABLED=0 "$GO" test -c -o "$T/probe.test" .)
	extras=(--extra "$T/hello.bin:/usr/local/bin/hello" "$T/probe.test:/opt/probe/probe.test")
fi

failures=0
check() { # DESCRIPTION GREP-PATTERN
	if grep -aqE "$2" "$OUT/console.log"; then
		echo "selftest: ok   $1"
	else
		echo "selftest: FAIL $1 (no line matching /$2/ in $OUT/console.log)"
		failures=$((failures + 1))
	fi
}

echo "selftest: run 1: every outcome (run.sh must exit non-zero)"
rc=0
"$HERE/run.sh" --scenarios "$S" "${extras[@]}" || rc=$?
if [ "$rc" -ne 0 ]; then
	echo "selftest: ok   run.sh exit status $rc"
else
	echo "selftest: FAIL run.sh exited 0 with failing scenarios"; failures=$((failures + 1))
fi
check "PASS line" '^VMTEST PASS 10-pass [0-9.]+s$'
check "on_exit hook ran" '^VMTEST PASS 15-hook '
check "FAIL line with the error" '^VMTEST FAIL 20-fail [0-9.]+s: deliberate failure \(exit 1\)$'
check "FAIL log tail" '^VMTEST-LOG 20-fail\| before the failure$'
check "daemon log tail on failure" '^VMTEST-LOG 20-fail\| daemon-says-hi$'
check "SKIP line" '^VMTEST SKIP 30-skip: deliberate skip$'
check "timeout" '^VMTEST FAIL 40-hang [0-9.]+s: timed out after 3s \(last output: hanging now\)$'
check "no leftover daemons" '^VMTEST PASS 50-clean '
if [ ${#extras[@]} -gt 0 ]; then check "static Go binaries" '^VMTEST PASS 60-go '; fi
check "summary" "^VMTEST SUMMARY pass=$(( ${#extras[@]} > 0 ? 4 : 3 )) fail=2 skip=$(( ${#extras[@]} > 0 ? 1 : 2 ))$"

echo "selftest: run 2: --tests selects passing scenarios only (run.sh must exit 0)"
if "$HERE/run.sh" --no-setup --scenarios "$S" --tests '^(10|50)-'; then
	echo "selftest: ok   run.sh exit status 0"
else
	echo "selftest: FAIL run.sh exited non-zero"; failures=$((failures + 1))
fi
check "selection" '^VMTEST SUMMARY pass=2 fail=0 skip=0$'

if [ "$failures" -eq 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $failures check(s) failed"; exit 1; fi
