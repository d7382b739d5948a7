package crypto

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// benchMaxWorkers is the pool size of BenchmarkPool (0: GOMAXPROCS);
// set with -workers.
var benchMaxWorkers = 0

var benchSizes = []int{4 << 10, 128 << 10}

func sizeName(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkSeal: one frame of header + payload sealed in place (the
// exporter's READ reply), per suite and size.
func BenchmarkSeal(b *testing.B) {
	for _, s := range allSuites {
		for _, n := range benchSizes {
			b.Run(s.String()+"/"+sizeName(n), func(b *testing.B) {
				c, _ := testSession(b, s)
				hdr := testHdr(1)
				body := make([]byte, n+s.TagSize())
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					c.Send.Seal(hdr, body[:n], body[n:])
				}
			})
		}
	}
}

// BenchmarkOpen: one frame verified (and decrypted) into another buffer
// (the client's READ reply into the ublk buffer).
func BenchmarkOpen(b *testing.B) {
	for _, s := range allSuites {
		for _, n := range benchSizes {
			b.Run(s.String()+"/"+sizeName(n), func(b *testing.B) {
				c, e := testSession(b, s)
				hdr := testHdr(1)
				sealed := make([]byte, n+s.TagSize())
				c.Send.SealTo(hdr, make([]byte, n), sealed)
				f, _ := e.Recv.Next(n)
				out := make([]byte, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					if err := f.OpenTo(hdr, sealed, out); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkPool: a stream of frames sealed through a Queue, by the
// submitter (inline) or by the pool's workers, and taken in order by a
// consumer; the figure is the stream's throughput. The crossover between
// the two sets DefaultInline.
func BenchmarkPool(b *testing.B) {
	sizes := []int{1 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10}
	for _, s := range Suites {
		for _, n := range sizes {
			for _, mode := range []string{"inline", "pool"} {
				b.Run(fmt.Sprintf("%v/%s/%s", s, sizeName(n), mode), func(b *testing.B) {
					inline := math.MaxInt
					if mode == "pool" {
						inline = -1
					}
					benchStream(b, s, n, inline)
				})
			}
		}
	}
}

func benchStream(b *testing.B, s Suite, n, inline int) {
	p := NewPool(PoolConfig{Max: benchMaxWorkers})
	defer p.Close()
	c, _ := testSession(b, s)
	const depth = 64
	q := p.NewQueue(depth, inline)
	jobs := make([]Job, 2*depth+2)
	for i := range jobs {
		jobs[i].Hdr = testHdr(i)
		jobs[i].Payload = make([]byte, n)
		jobs[i].Body = make([]byte, n+s.TagSize())
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.ResetTimer()
	done := make(chan struct{})
	go func() {
		for {
			if _, ok := q.Next(); !ok {
				close(done)
				return
			}
		}
	}()
	for i := 0; i < b.N; i++ {
		j := &jobs[i%len(jobs)]
		j.Frame, _ = c.Send.Next(n)
		q.Submit(j)
	}
	q.Close()
	<-done
}

// BenchmarkPoolLatency: one frame at a time (queue depth 1): the cost of
// handing a frame to a worker and waking the consumer, against doing the
// work inline. With nothing else in flight the pool can only add latency.
func BenchmarkPoolLatency(b *testing.B) {
	for _, s := range []Suite{CRC32C, AES256GCM} {
		for _, n := range []int{0, 4 << 10, 64 << 10} {
			for _, mode := range []string{"inline", "pool"} {
				b.Run(fmt.Sprintf("%v/%s/%s", s, sizeName(n), mode), func(b *testing.B) {
					inline := math.MaxInt
					if mode == "pool" {
						inline = -1
					}
					p := NewPool(PoolConfig{Idle: time.Second})
					defer p.Close()
					c, _ := testSession(b, s)
					q := p.NewQueue(1, inline)
					j := &Job{Hdr: testHdr(1), Payload: make([]byte, n), Body: make([]byte, n+s.TagSize())}
					b.ReportAllocs()
					for b.Loop() {
						j.Frame, _ = c.Send.Next(n)
						q.Submit(j)
						q.Next()
					}
				})
			}
		}
	}
}
