#!/usr/bin/env bash
# Host benchmark of issue 7: the same fio jobs through fio's nbd engine
# against NBD servers serving the same backing file on the real disk:
# dst export --nbd-listen (O_DIRECT, its default), the same with the
# export ,buffered (through the page cache, as nbdkit and nbd-server
# work), nbdkit file (cache=none), qemu-nbd (aio=io_uring, cache=none;
# aio=native where io_uring is missing) and nbd-server.
# Jobs: 4k randread and randwrite at depth 1 and 32, 128k sequential read
# and write at depth 8, RUNTIME seconds each (default 5), RUNS times
# (default 2). Each job runs against every server in turn before the next
# job (the order of the servers rotates from job to job and run to run),
# so that a change in the host's load hits every server alike; each
# server is started for its job and stopped after it. Prints a markdown
# table of the medians over the runs: IOPS, MB/s, p99 completion latency,
# and the ratio of dst and of dst-buffered to the best peer (with each
# run's ratio), and the
# load average before and after; OUT=FILE also writes it there, and
# SVG=FILE draws the median IOPS of each job as grouped bars (relative to
# the job's best server).
#
# The file lives in DIR (default /var/tmp), which must be on a real disk,
# not tmpfs: on tmpfs O_DIRECT servers behave differently (dst copies
# through a mapping, qemu-nbd cannot use cache=none).
#
#   scripts/bench-nbd.sh                  # builds bin/dst if needed
#   RUNTIME=10 RUNS=3 SIZE=1G DIR=/var/tmp OUT=table.md SVG=docs/bench-nbd.svg scripts/bench-nbd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-5}
RUNS=${RUNS:-2}
SIZE=${SIZE:-512M}
DIR=${DIR:-/var/tmp}
OUT=${OUT:-}
PORT0=${PORT0:-10950}

for t in fio nbdkit qemu-nbd nbd-server python3; do
	command -v "$t" >/dev/null || { echo "bench-nbd.sh: $t is missing: run scripts/deps.sh as root" >&2; exit 1; }
done
fio --enghelp 2>&1 | grep -qw nbd || { echo "bench-nbd.sh: this fio has no nbd engine" >&2; exit 1; }
if [ ! -x bin/dst ] || [ -n "$(find cmd export internal transport -newer bin/dst -name '*.go' 2>/dev/null | head -1)" ]; then
	PATH=$PATH:/usr/local/go/bin make -s build
fi

if [ "$(stat -f -c %T "$DIR")" = tmpfs ]; then
	echo "bench-nbd.sh: $DIR is on tmpfs: give DIR= a directory on a real disk" >&2
	exit 1
fi
work=$(mktemp -d "$DIR/dst-bench-nbd.XXXXXX")
img=$work/disk.img
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
# A fully allocated file of random data, so that reads hit the disk and
# writes overwrite.
fallocate -l "$SIZE" "$img"
dd if=/dev/urandom of="$img" bs=1M count="$(( $(stat -c %s "$img") >> 20 ))" conv=notrunc status=none

wait_port() {
	for _ in $(seq 100); do
		(exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "bench-nbd.sh: nothing listens on port $1" >&2
	return 1
}

# start NAME: starts one server in the background, sets uri. Each start
# takes the next port, so that no server waits for its predecessor's.
# Before each server starts, the file's dirty pages are written back and
# its cached pages dropped (for this file only: sync FILE, dd
# iflag=nocache count=0), so that no server reads what another left in
# the page cache, or pays for another's write-back.
nstart=0
start() {
	local port=$((PORT0 + nstart % 100))
	nstart=$((nstart + 1))
	sync "$img"
	dd if="$img" iflag=nocache count=0 status=none
	case $1 in
	dst | dst-buffered)
		local opt=
		[ "$1" = dst ] || opt=,buffered
		bin/dst --log-level warn export --export "disk=$img$opt" --allow-all=rw --nbd-listen "nbd://127.0.0.1:$port" \
			>"$work/$1.out" 2>"$work/$1.err" &
		uri=nbd://127.0.0.1:$port/disk ;;
	nbdkit)
		nbdkit -f --ipaddr 127.0.0.1 --port "$port" file "file=$img" cache=none 2>"$work/nbdkit.err" &
		uri=nbd://127.0.0.1:$port/ ;;
	qemu-nbd)
		local aio=io_uring
		qemu-nbd --help | grep -q io_uring || aio=native
		qemu-nbd -f raw --aio=$aio --cache=none -t -e 8 -b 127.0.0.1 -p "$port" -x disk "$img" 2>"$work/qemu-nbd.err" &
		uri=nbd://127.0.0.1:$port/disk ;;
	nbd-server)
		printf '[generic]\n\tlistenaddr = 127.0.0.1\n\tport = %s\n[disk]\n\texportname = %s\n' "$port" "$img" >"$work/nbd-server.conf"
		# It daemonizes (its -d mode serves a single connection): the pid
		# comes from its pid file.
		nbd-server -C "$work/nbd-server.conf" -p "$work/nbd-server.pid" 2>"$work/nbd-server.err"
		for _ in $(seq 50); do [ -s "$work/nbd-server.pid" ] && break; sleep 0.1; done
		pids+=("$(cat "$work/nbd-server.pid")")
		uri=nbd://127.0.0.1:$port/disk
		wait_port "$port"
		return ;;
	esac
	pids+=($!)
	wait_port "$port"
}

# stop: stops the server started last.
stop() {
	kill "${pids[-1]}" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "${pids[-1]}" 2>/dev/null || break; sleep 0.1; done
	wait "${pids[-1]}" 2>/dev/null || true
	unset 'pids[-1]'
}

jobs=("randread-4k-qd1 randread 4k 1" "randread-4k-qd32 randread 4k 32"
	"randwrite-4k-qd1 randwrite 4k 1" "randwrite-4k-qd32 randwrite 4k 32"
	"read-128k-qd8 read 128k 8" "write-128k-qd8 write 128k 8")
servers=(dst dst-buffered nbdkit qemu-nbd nbd-server)
results=$work/results.tsv
: >"$results"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
k=0
for run in $(seq "$RUNS"); do
	for j in "${jobs[@]}"; do
		read -r name rw bs qd <<<"$j"
		for i in "${!servers[@]}"; do
			s=${servers[$(( (i + k) % ${#servers[@]} ))]}
			start "$s"
			out=$work/$s-$name-$run
			fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
				--runtime="$RUNTIME" --time_based --ramp_time=1 --output-format=json --output="$out.json" &>"$out.err" ||
				{ echo "bench-nbd.sh: fio $name against $s failed:" >&2; cat "$out.err" >&2; exit 1; }
			stop
			python3 - "$out.json" "$s" "$name" "$run" >>"$results" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
p99 = d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{d['iops']:.0f}\t{d['bw_bytes']/1e6:.1f}\t{p99:.0f}\t{sys.argv[4]}")
PY
			echo "bench-nbd.sh: run $run $name $s: $(cut -f3 <<<"$(tail -1 "$results")") IOPS (load $(cut -d' ' -f1 /proc/loadavg))" >&2
		done
		k=$((k + 1))
	done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

table=$(python3 - "$results" "$RUNTIME" "$SIZE" "$RUNS" "$load0" "$load1" <<'PY'
import sys, collections, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = collections.defaultdict(lambda: collections.defaultdict(list))
runs = collections.defaultdict(lambda: collections.defaultdict(dict))
for s, job, iops, mbs, p99, run in rows:
    by[job][s].append((float(iops), float(mbs), float(p99)))
    runs[job][run][s] = float(iops)
servers = ["dst", "dst-buffered", "nbdkit", "qemu-nbd", "nbd-server"]
peers = servers[2:]
print(f"fio nbd engine, {sys.argv[2]} s per job, {sys.argv[3]} file, median of {sys.argv[4]} runs; "
      f"IOPS / MB/s / p99 µs; ratio = IOPS / best peer's IOPS (of the medians; each run's in brackets); "
      f"load average {sys.argv[5]} before, {sys.argv[6]} after")
print()
print("| job | " + " | ".join(servers) + " | dst / best peer | dst-buffered / best peer |")
print("|---|" + "---|" * (len(servers) + 2))
def med(job, s):
    v = by[job].get(s)
    if not v:
        return (0, 0, 0)
    return tuple(statistics.median(x[k] for x in v) for k in range(3))
for job in by:
    cells = [f"{i:,.0f} / {m:.1f} / {p:.0f}" for i, m, p in (med(job, s) for s in servers)]
    best = max(med(job, s)[0] for s in peers) or 1
    ratios = []
    for d in servers[:2]:
        per = []
        for run in sorted(runs[job], key=int):
            r = runs[job][run]
            b = max(r.get(s, 0) for s in peers) or 1
            per.append(f"{r.get(d, 0) / b:.2f}")
        ratios.append(f"{med(job, d)[0] / best:.2f}× ({', '.join(per)})")
    print(f"| {job} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
PY
)
echo "$table"
[ -z "$OUT" ] || echo "$table" >"$OUT"
[ -z "${SVG:-}" ] || python3 - "$results" "$RUNTIME" "$SIZE" "$RUNS" >"$SVG" <<'PY'
import sys, collections, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
all_ = collections.defaultdict(lambda: collections.defaultdict(list))
for s, job, iops, mbs, p99, run in rows:
    all_[job][s].append(float(iops))
by = {job: {s: statistics.median(v) for s, v in d.items()} for job, d in all_.items()}
servers = ["dst", "dst-buffered", "nbdkit", "qemu-nbd", "nbd-server"]
colors = ["#d62728", "#ff9896", "#1f77b4", "#2ca02c", "#9467bd"]
jobs = list(by)
bw, gap, left, top, h = 14, 22, 60, 40, 220
gw = bw * len(servers) + gap
width = left + gw * len(jobs) + 20
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + h + 90}" font-family="sans-serif" font-size="11">',
       f'<text x="{left}" y="18" font-size="13">NBD servers, fio nbd engine ({sys.argv[2]} s per job, {sys.argv[3]} file, median of {sys.argv[4]} runs): IOPS relative to the best server per job</text>']
for k in range(5):
    y = top + h - h * k / 4
    out.append(f'<line x1="{left}" x2="{width - 20}" y1="{y:.0f}" y2="{y:.0f}" stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">{k * 25}%</text>')
for j, job in enumerate(jobs):
    best = max(by[job].values()) or 1
    x0 = left + j * gw + gap / 2
    for i, s in enumerate(servers):
        v = by[job].get(s, 0)
        bh = h * v / best
        out.append(f'<rect x="{x0 + i * bw:.0f}" y="{top + h - bh:.0f}" width="{bw - 2}" height="{bh:.0f}" fill="{colors[i]}"><title>{s} {job}: {v:,.0f} IOPS</title></rect>')
    out.append(f'<text x="{x0 + gw / 2 - gap / 2:.0f}" y="{top + h + 14}" text-anchor="middle">{job}</text>')
for i, s in enumerate(servers):
    x = left + i * 110
    out.append(f'<rect x="{x}" y="{top + h + 40}" width="10" height="10" fill="{colors[i]}"/><text x="{x + 14}" y="{top + h + 49}">{s}</text>')
out.append("</svg>")
print("\n".join(out))
PY
