#!/usr/bin/env bash
# vmtest/bench/table.sh - turn BENCH lines into a Markdown table (host side).
#
# Usage: table.sh [-b LABEL=BASELINE]... [FILE...]   (default: stdin)
# Input: lines "BENCH <label> <job> iops=N mbs=N mean_us=N p99_us=N" and
# "BENCHBASE <label> <baseline>" (other lines are ignored). The ratio column
# is label IOPS / baseline IOPS on the same job. Pairs come from BENCHBASE
# lines, -b options, and the defaults dst-null=null_blk, dst-file=loop-dio,
# dst-nbd=nbd. If a label/job appears more than once, the last one counts.
set -euo pipefail

pairs="dst-null=null_blk dst-file=loop-dio dst-nbd=nbd"
while getopts b:h opt; do
	case $opt in
	b) pairs="$pairs $OPTARG" ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done
shift $((OPTIND - 1))

cat "$@" | tr -d '\r' | awk -v pairs="$pairs" '
function val(s,   k) { k = index(s, "="); return substr(s, k + 1) }
function kfmt(n) { n += 0; return n >= 1000 ? sprintf("%.1fk", n / 1000) : sprintf("%d", n) }
BEGIN { np = split(pairs, p, " "); for (i = 1; i <= np; i++) { split(p[i], kv, "="); base[kv[1]] = kv[2] } }
$1 == "BENCHBASE" && NF >= 3 { base[$2] = $3; next }
$1 == "BENCH" && NF >= 7 {
	l = $2; j = $3
	if (!(j in jseen)) { jseen[j] = 1; jobs[++nj] = j }
	if (!(l in lseen)) { lseen[l] = 1; labels[++nl] = l }
	iops[l, j] = val($4); mbs[l, j] = val($5); mean[l, j] = val($6); p99[l, j] = val($7)
	have[l, j] = 1
}
END {
	if (nj == 0) { print "table.sh: no BENCH lines" > "/dev/stderr"; exit 1 }
	print "| job | device | IOPS | MB/s | mean µs | p99 µs | vs baseline |"
	print "|---|---|---:|---:|---:|---:|---|"
	for (a = 1; a <= nj; a++) {
		j = jobs[a]
		for (b = 1; b <= nl; b++) {
			l = labels[b]
			if (!have[l, j]) continue
			r = ""
			if ((l in base) && have[base[l], j] && iops[base[l], j] + 0 > 0)
				r = sprintf("%.2f× %s", iops[l, j] / iops[base[l], j], base[l])
			printf "| %s | %s | %s | %s | %s | %s | %s |\n", j, l, kfmt(iops[l, j]), mbs[l, j], mean[l, j], p99[l, j], r
		}
	}
}'
