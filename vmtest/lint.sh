#!/usr/bin/env bash
# vmtest/lint.sh - shellcheck every harness script (host and guest side).
# Guest scripts run under dash (/bin/sh) or busybox sh (init), so they are
# checked as POSIX sh / dash. Needs shellcheck (apt-get install shellcheck).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v shellcheck >/dev/null || { echo "lint.sh: shellcheck not installed (apt-get install shellcheck)" >&2; exit 1; }
shellcheck setup.sh mkinitramfs.sh run.sh lint.sh selftest.sh bench/table.sh
shellcheck -s sh init run-all.sh
# /tests/lib.sh and /tests/bench/lib.sh exist only in the guest (SC1091).
shellcheck -s dash -e SC1091 lib.sh bench/lib.sh bench/[0-9]*.sh scenarios/*.sh
echo "lint.sh: OK"
