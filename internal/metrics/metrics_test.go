package metrics

import (
	"testing"
)

func TestBucket(t *testing.T) {
	cases := []struct {
		ns   int64
		want int
	}{
		{0, 0}, {1, 0}, {16_000, 0}, {16_001, 1}, {32_000, 1}, {32_001, 2},
		{1_000_000, 6}, // 1 ms: 16 µs << 6 = 1.024 ms
		{Buckets[NumBuckets-1], NumBuckets - 1}, {Buckets[NumBuckets-1] + 1, NumBuckets}, {1 << 62, NumBuckets},
	}
	for _, c := range cases {
		if got := bucket(c.ns); got != c.want {
			t.Errorf("bucket(%d) = %d, want %d", c.ns, got, c.want)
		}
		// The definition: the first bound >= ns.
		if c.want < NumBuckets && (Buckets[c.want] < c.ns || c.want > 0 && Buckets[c.want-1] >= c.ns) {
			t.Errorf("bucket(%d) = %d: bounds %v", c.ns, c.want, Buckets[max(c.want-1, 0):c.want+1])
		}
	}
}

func TestIO(t *testing.T) {
	var io IO
	for range 3 {
		io.Start()
	}
	io.Done(Write, 4096, 20_000, false)
	io.Done(Write, 4096, 5_000, true)
	io.Done(NumOps, 1, 1, false) // ignored
	s := io.Snapshot()
	w := s.Op[Write]
	if w.Count != 2 || w.Bytes != 4096 || w.Errors != 1 || w.Latency.Count() != 2 || w.Latency.SumNs != 25_000 {
		t.Fatalf("write counters %+v", w)
	}
	if w.Latency.Counts[0] != 1 || w.Latency.Counts[1] != 1 {
		t.Fatalf("buckets %v", w.Latency.Counts)
	}
	if s.Inflight() != 1 || s.Completed() != 2 {
		t.Fatalf("inflight %d completed %d", s.Inflight(), s.Completed())
	}
	var sum IOSnapshot
	sum.Add(&s)
	sum.Add(&s)
	if sum.Op[Write].Bytes != 8192 || sum.Started != 6 || sum.Op[Write].Latency.Counts[1] != 2 {
		t.Fatalf("sum %+v", sum.Op[Write])
	}
}

func TestDoneAllocs(t *testing.T) {
	var io IO
	if n := testing.AllocsPerRun(1000, func() {
		io.Start()
		io.Done(Read, 4096, Now()&0xffffff, false)
	}); n != 0 {
		t.Fatalf("%v allocs per request", n)
	}
}

func BenchmarkStartDone(b *testing.B) {
	var io IO
	b.ReportAllocs()
	for b.Loop() {
		t0 := Now()
		io.Start()
		io.Done(Read, 4096, Now()-t0, false)
	}
}

// BenchmarkNow is the clock read of which a request takes two.
func BenchmarkNow(b *testing.B) {
	var s int64
	for b.Loop() {
		s += Now()
	}
	_ = s
}

// BenchmarkDone is the counting alone (five atomic adds).
func BenchmarkDone(b *testing.B) {
	var io IO
	b.ReportAllocs()
	for b.Loop() {
		io.Start()
		io.Done(Write, 4096, 50_000, false)
	}
}
