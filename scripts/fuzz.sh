#!/usr/bin/env bash
# Runs every fuzz target of the module (found by name: func FuzzXxx in a
# _test.go file) for FUZZTIME each (default 5s), one after the other, and
# prints the executions each reached. Fails on the first crash; the failing
# input is saved under the package's testdata/fuzz and reported by go test.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-5s}
total=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1) || {
		echo "$out"
		echo "fuzz.sh: $pkg $name FAILED" >&2
		exit 1
	}
	execs=$(echo "$out" | grep -oE 'execs: [0-9]+' | tail -n 1 | grep -oE '[0-9]+' || echo 0)
	total=$((total + execs))
	printf 'fuzz %-22s %-20s %10s execs in %s\n' "$pkg" "$name" "$execs" "$FUZZTIME"
done < <(grep -rHoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's|^\./||; s|:func |:|' | sort)
echo "fuzz.sh: all targets passed, $total executions in total"
