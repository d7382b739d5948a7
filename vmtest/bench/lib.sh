# vmtest/bench/lib.sh - fio benchmark helpers (guest side, busybox sh).
# Installed as /tests/bench/lib.sh. A bench script (vmtest/bench/NN-name.sh,
# executable) looks like:
#
#   #!/bin/sh
#   # timeout: 300
#   set -eu
#   . /tests/bench/lib.sh
#   ... bring up a device ...
#   bench_device /dev/ublkb0 dst-null null_blk   # label, optional baseline label
#
# Each job appends one line to $VMTEST_RESULTS (copied out by run.sh to
# vmtest/out/bench.txt and turned into a table by vmtest/bench/table.sh):
#   BENCH <label> <job> iops=<n> mbs=<n> mean_us=<n> p99_us=<n>
#   BENCHBASE <label> <baseline-label>     (from bench_device's 3rd argument)
# mbs is MB/s (10^6 bytes); latencies are fio's total latency (submit to
# completion): mean and 99th percentile, in microseconds.
#
# Env: BENCH_RUNTIME (s per job, default 8; plus 1 s ramp),
#      BENCH_JOBS (space separated job names, default the standard six),
#      BENCH_SIZE (fio --size, default: whole device).
. /tests/lib.sh

: "${BENCH_RUNTIME:=8}"
: "${BENCH_JOBS:=randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 read-128k-qd8 write-128k-qd8}"

# bench_job DEV LABEL JOB: JOB is <rw>-<bs>-qd<depth>, rw one of fio's
# read, write, randread, randwrite, randrw, e.g. randread-4k-qd32.
bench_job() {
	_dev=$1 _label=$2 _job=$3
	_rw=${_job%%-*}; _rest=${_job#*-}; _bs=${_rest%%-*}; _qd=${_rest#*-qd}
	case $_rw in read|write|randread|randwrite|randrw) ;; *)
		echo "ERROR: bad bench job name '$_job' (want rw-bs-qdN)" >&2; return 1 ;;
	esac
	_out=$VMTEST_TMP/fio-$_label-$_job.json
	if ! fio --name="$_job" --filename="$_dev" --ioengine="$(fio_engine)" --direct=1 \
		--rw="$_rw" --bs="$_bs" --iodepth="$_qd" --numjobs=1 \
		--time_based --runtime="$BENCH_RUNTIME" --ramp_time=1 \
		--norandommap --randrepeat=0 --lat_percentiles=1 \
		${BENCH_SIZE:+--size="$BENCH_SIZE"} \
		--output-format=json --output="$_out" 2>"$_out.err"; then
		tail -n 5 "$_out.err" >&2
		echo "ERROR: fio $_job on $_dev ($_label) failed" >&2
		return 1
	fi
	jq -r --arg l "$_label" --arg j "$_job" '.jobs[0] as $x
		| (if ($j | test("^(rand)?read-")) then $x.read else $x.write end) as $d
		| def r1: (. * 10 | round) / 10;
		"BENCH \($l) \($j) iops=\($d.iops | round) mbs=\($d.bw_bytes / 1e6 | r1) mean_us=\($d.lat_ns.mean / 1000 | r1) p99_us=\(($d.lat_ns.percentile["99.000000"] // 0) / 1000 | r1)"' \
		"$_out" | tee -a "$VMTEST_RESULTS"
}

# bench_device DEV LABEL [BASELINE_LABEL]: run every job of BENCH_JOBS.
bench_device() {
	[ -b "$1" ] || { echo "ERROR: bench_device: $1 is not a block device" >&2; return 1; }
	[ -z "${3:-}" ] || echo "BENCHBASE $2 $3" | tee -a "$VMTEST_RESULTS"
	log "bench $2 on $1 ($(dev_size "$1") bytes, ${BENCH_RUNTIME}s per job)"
	for _j in $BENCH_JOBS; do bench_job "$1" "$2" "$_j" || return 1; done
}

# bench_backing_file PATH [SIZE_MIB=256]: an allocated file on tmpfs, the
# common backing store of loop-dio and file-backed ublk targets.
bench_backing_file() { mk_file "$1" "${2:-256}"; }

# null_blk_load: the null_blk baseline device /dev/nullb0: no memory
# backing, blk-mq, and max_sectors=1024 so 128k requests are not split
# (the default max I/O is 127 KiB).
null_blk_load() {
	load_module null_blk nr_devices=1 queue_mode=2 memory_backed=0 max_sectors=1024 "$@"
	wait_for_file /dev/nullb0 5
}

# nbd_server_start FILE: Debian's nbd-server exporting FILE as "disk" on
# 127.0.0.1:10809, as a daemon that forks a child per connection (so the
# kernel client and dst attach nbd:// can both use it); nbd_server_stop
# ends it.
nbd_server_start() {
	cat >"$VMTEST_TMP/nbd.conf" <<CONF
[generic]
    user = root
    group = root
    listenaddr = 127.0.0.1
    port = 10809
[disk]
    exportname = $1
CONF
	nbd-server -C "$VMTEST_TMP/nbd.conf" -p "$VMTEST_TMP/nbd.pid" >"$VMTEST_TMP/nbd-server.log" 2>&1 ||
		fail "nbd-server: $(cat "$VMTEST_TMP/nbd-server.log")"
	sleep 1
}
nbd_server_stop() { kill "$(cat "$VMTEST_TMP/nbd.pid")" 2>/dev/null || true; }

# bench_kernel_nbd LABEL SIZE: the kernel NBD client (nbd.ko +
# nbd-client, one connection) on the nbd_server_start export of SIZE
# bytes, benchmarked as LABEL, then disconnected.
bench_kernel_nbd() {
	load_module nbd nbds_max=2
	nbd-client -N disk 127.0.0.1 10809 /dev/nbd0 >"$VMTEST_TMP/nbd-client.log" 2>&1 ||
		fail "nbd-client failed: $(cat "$VMTEST_TMP/nbd-client.log")"
	[ "$(dev_size /dev/nbd0)" = "$2" ] || fail "/dev/nbd0 has $(dev_size /dev/nbd0) bytes, want $2"
	bench_device /dev/nbd0 "$1"
	nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
}
