#!/usr/bin/env bash
# Runs every fuzz target of the module (found by name: func FuzzXxx in a
# _test.go file) for FUZZTIME each (default 5s), one after the other, and
# prints the executions each reached. With FUZZ_PROPS=N it also runs the
# engine's model test with N thousand cases and the history check with N
# seeds (`make fuzz` sets N=20). Fails on the first crash; the failing
# input is saved under the package's testdata/fuzz and reported by go test.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-5s}
total=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	corpus=$pkg/testdata/fuzz/$name
	before=$(ls "$corpus" 2>/dev/null || true)
	for attempt in 1 2; do
		out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1) && break
		# Go 1.26's fuzz coordinator can report its own -fuzztime deadline
		# as a failure when a worker is still mid-input on a loaded machine
		# (golang/go#75804, fixed in Go 1.27): a bare "context deadline
		# exceeded" with no new input written. That, and only that, is
		# retried once; anything else, or a second time, fails.
		if [ "$attempt" = 1 ] && echo "$out" | grep -qx '    context deadline exceeded' &&
			[ "$(ls "$corpus" 2>/dev/null || true)" = "$before" ]; then
			echo "fuzz.sh: $pkg $name: the coordinator's deadline race (golang/go#75804), no input saved: retrying once" >&2
			continue
		fi
		echo "$out"
		echo "fuzz.sh: $pkg $name FAILED" >&2
		exit 1
	done
	execs=$(echo "$out" | grep -oE 'execs: [0-9]+' | tail -n 1 | grep -oE '[0-9]+' || echo 0)
	total=$((total + execs))
	printf 'fuzz %-22s %-20s %10s execs in %s\n' "$pkg" "$name" "$execs" "$FUZZTIME"
done < <(grep -rHoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's|^\./||; s|:func |:|' | sort)
echo "fuzz.sh: all targets passed, $total executions in total"

# The model-based and history checks get more cases here than in the
# regular test run: rapid checks and porcupine seeds scale with FUZZ_PROPS.
if [ -n "${FUZZ_PROPS:-}" ]; then
	echo "fuzz.sh: model test with $((FUZZ_PROPS * 1000)) rapid cases, history check with $FUZZ_PROPS seeds"
	go test -count=1 -run '^TestModel$' ./txn -rapid.checks=$((FUZZ_PROPS * 1000)) -rapid.steps=300
	DST_HISTORY_SEEDS=$FUZZ_PROPS go test -count=1 -run '^TestHistoryLinearizable$' ./txn
fi
