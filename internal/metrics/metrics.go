// Package metrics holds the counters DST's data paths update on their hot
// paths: per-operation counts, bytes, errors and a fixed-bucket latency
// histogram, all plain atomics, so that an update never allocates or
// locks and a reader (a Prometheus collector, at scrape time) can take a
// snapshot from any goroutine. It imports nothing of DST's and nothing of
// Prometheus: the layers that count (ublk, txn, export) stay free of the
// exposition, which lives in internal/monitor.
package metrics

import (
	"sync/atomic"
	"time"
)

// Op is a block operation, in the order of Ops.
type Op uint8

const (
	Read Op = iota
	Write
	Flush
	Discard
	WriteZeroes
	NumOps
)

// Ops are the label values of the operations, indexed by Op.
var Ops = [NumOps]string{"read", "write", "flush", "discard", "write_zeroes"}

// Buckets are the upper bounds of the latency histogram in nanoseconds:
// 16 µs to 16.8 s, doubling (21 buckets, plus +Inf). Block latencies span
// memory-speed local targets (µs) to resends after a timeout (seconds).
var Buckets = func() [NumBuckets]int64 {
	var b [NumBuckets]int64
	for i := range b {
		b[i] = 16_000 << i
	}
	return b
}()

// NumBuckets is the number of finite histogram buckets.
const NumBuckets = 21

// Histogram is a fixed-bucket latency histogram updated with atomics.
// Counts are per bucket (not cumulative); the last slot is +Inf.
type Histogram struct {
	counts [NumBuckets + 1]atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
}

// bucket returns the index of the first bucket whose bound is >= ns.
func bucket(ns int64) int {
	if ns <= Buckets[0] {
		return 0
	}
	// Buckets double: the index is the bit length of (ns-1)/16000.
	i := 0
	for v := (ns - 1) / 16_000; v > 0; v >>= 1 {
		i++
	}
	return min(i, NumBuckets)
}

// Observe records one latency in nanoseconds (negative counts as 0).
func (h *Histogram) Observe(ns int64) {
	ns = max(ns, 0)
	h.counts[bucket(ns)].Add(1)
	h.sum.Add(uint64(ns))
}

// HistogramSnapshot is a copy of a Histogram.
type HistogramSnapshot struct {
	Counts [NumBuckets + 1]uint64 // per bucket; the last is +Inf
	SumNs  uint64
}

// Count is the number of observations.
func (s *HistogramSnapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Add adds o to s.
func (s *HistogramSnapshot) Add(o *HistogramSnapshot) {
	for i := range s.Counts {
		s.Counts[i] += o.Counts[i]
	}
	s.SumNs += o.SumNs
}

// Snapshot copies h (not atomically as a whole: a concurrent Observe may
// be half in it, which a scrape tolerates).
func (h *Histogram) Snapshot() HistogramSnapshot {
	var s HistogramSnapshot
	for i := range s.Counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.SumNs = h.sum.Load()
	return s
}

// OpCounters are the counters of one operation.
type OpCounters struct {
	Count   atomic.Uint64 // completed requests, errors included
	Bytes   atomic.Uint64 // bytes of the successful ones
	Errors  atomic.Uint64
	Latency Histogram
}

// IO counts the requests of one device queue or one export, by operation.
// Started counts requests handed out (any op); Started minus the sum of
// the Counts is the number in flight.
type IO struct {
	Started atomic.Uint64
	Op      [NumOps]OpCounters
	_       [64]byte // keep the next IO off this one's last cache line
}

// Start counts a request handed out.
func (io *IO) Start() { io.Started.Add(1) }

// Done counts a completed request of op with length bytes, failed or
// not, that took ns nanoseconds. op out of range is ignored.
func (io *IO) Done(op Op, length uint32, ns int64, failed bool) {
	if op >= NumOps {
		return
	}
	c := &io.Op[op]
	c.Count.Add(1)
	if failed {
		c.Errors.Add(1)
	} else {
		c.Bytes.Add(uint64(length))
	}
	c.Latency.Observe(ns)
}

// OpSnapshot is a copy of OpCounters.
type OpSnapshot struct {
	Count, Bytes, Errors uint64
	Latency              HistogramSnapshot
}

// IOSnapshot is a copy of IO.
type IOSnapshot struct {
	Started uint64
	Op      [NumOps]OpSnapshot
}

// Snapshot copies io.
func (io *IO) Snapshot() IOSnapshot {
	var s IOSnapshot
	s.Started = io.Started.Load()
	for i := range s.Op {
		c := &io.Op[i]
		s.Op[i] = OpSnapshot{Count: c.Count.Load(), Bytes: c.Bytes.Load(), Errors: c.Errors.Load(), Latency: c.Latency.Snapshot()}
	}
	return s
}

// Add adds o to s.
func (s *IOSnapshot) Add(o *IOSnapshot) {
	s.Started += o.Started
	for i := range s.Op {
		s.Op[i].Count += o.Op[i].Count
		s.Op[i].Bytes += o.Op[i].Bytes
		s.Op[i].Errors += o.Op[i].Errors
		s.Op[i].Latency.Add(&o.Op[i].Latency)
	}
}

// Completed is the number of completed requests over every op.
func (s *IOSnapshot) Completed() uint64 {
	var n uint64
	for i := range s.Op {
		n += s.Op[i].Count
	}
	return n
}

// Inflight is Started minus Completed (0 if a racing snapshot saw a
// completion before its start).
func (s *IOSnapshot) Inflight() uint64 {
	if c := s.Completed(); s.Started > c {
		return s.Started - c
	}
	return 0
}

var epoch = time.Now()

// Now is a monotonic clock in nanoseconds for latencies (no allocation;
// one vDSO clock read).
func Now() int64 { return int64(time.Since(epoch)) }
