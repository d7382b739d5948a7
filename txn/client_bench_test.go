package txn

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"

	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
)

// BenchmarkClient drives the engine and its driver against a real exporter
// over loopback TCP on a real file with O_DIRECT, keeping `depth` requests
// in flight, and reports IOPS, MB/s and latency percentiles. The exporter
// runs in the same process, so allocs/op counts both sides.
func BenchmarkClient(b *testing.B) {
	jobs := []benchJobSpec{
		{"randread-4k-qd1", wire.OpRead, 4096, 1, false},
		{"randread-4k-qd32", wire.OpRead, 4096, 32, false},
		{"randwrite-4k-qd1", wire.OpWrite, 4096, 1, false},
		{"randwrite-4k-qd32", wire.OpWrite, 4096, 32, false},
		{"read-128k-qd8", wire.OpRead, 128 << 10, 8, true},
		{"write-128k-qd8", wire.OpWrite, 128 << 10, 8, true},
	}
	const size = benchSize
	// DST_BENCH_URL points the benchmark at an exporter in another process
	// (an export named "disk" of at least 256 MiB).
	url := os.Getenv("DST_BENCH_URL")
	if url == "" {
		path := exporttest.File(b, size)
		cfg := export.Config{
			Exports: []export.ExportConfig{{Name: "disk", Path: path}},
			Access:  export.ACL{AllowAll: export.ReadWrite},
		}
		_, addr := exporttest.Start(b, cfg, exporttest.TCP4)
		url = addr + "/disk"
	}
	for _, j := range jobs {
		b.Run(j.name, func(b *testing.B) { benchJob(b, Options{URL: url}, j) })
	}
}

type benchJobSpec struct {
	name  string
	op    wire.Op
	bs    int
	depth int
	seq   bool
}

const benchSize = 256 << 20

// benchJob runs one job of BenchmarkClient with opts (URL set).
func benchJob(b *testing.B, opts Options, j benchJobSpec) {
	const size = benchSize
	opts.Capacity = 2 * j.depth
	c, err := Dial(context.Background(), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.Background())
	slab, _ := uring.AlignedBuffer(j.depth * j.bs)
	defer uring.FreeBuffer(slab)
	var (
		mu       sync.Mutex
		started  = make([]time.Time, j.depth)
		lat      = make([]time.Duration, 0, b.N+j.depth)
		issued   atomic.Int64
		finished = make(chan struct{})
		rng      = rand.New(rand.NewPCG(1, 2))
		seqOff   uint64
		failed   atomic.Int64
	)
	next := func(h Handle) {
		var off uint64
		if j.seq {
			off = seqOff
			seqOff = (seqOff + uint64(j.bs)) % size
		} else {
			off = uint64(rng.IntN(size/j.bs)) * uint64(j.bs)
		}
		started[h] = time.Now()
		c.Submit(h, j.op, 0, off, uint32(j.bs), slab[int(h)*j.bs:(int(h)+1)*j.bs])
	}
	var done int64
	c.SetDeliver(func(comps []Completion) {
		mu.Lock()
		defer mu.Unlock()
		for _, cp := range comps {
			if cp.Err != 0 {
				failed.Add(1)
			}
			lat = append(lat, time.Since(started[cp.Handle]))
			done++
			if issued.Load() < int64(b.N) {
				issued.Add(1)
				next(cp.Handle)
			} else if done == issued.Load() {
				close(finished)
			}
		}
	})
	b.ReportAllocs()
	b.SetBytes(int64(j.bs))
	b.ResetTimer()
	start := time.Now()
	mu.Lock()
	for h := 0; h < j.depth && issued.Load() < int64(b.N); h++ {
		issued.Add(1)
		next(Handle(h))
	}
	mu.Unlock()
	<-finished
	el := time.Since(start)
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d requests failed", failed.Load())
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/el.Seconds(), "IOPS")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// memExport makes a file of size bytes of data on /dev/shm.
func memExport(b *testing.B, size int) string {
	f, err := os.CreateTemp("/dev/shm", "dst-bench-*.img")
	if err != nil {
		b.Skipf("no /dev/shm: %v", err)
	}
	b.Cleanup(func() { os.Remove(f.Name()) })
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for off := 0; off < size; off += len(buf) {
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
		}
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return f.Name()
}

// BenchmarkClientCrypto is BenchmarkClient's 4k QD32 and 128k sequential
// jobs with every suite (PROTOCOL.md §8), plaintext first, against an
// in-process exporter with the same suite (so both sides' crypto is on
// the same CPUs, as are both sides' threads).
func BenchmarkClientCrypto(b *testing.B) {
	jobs := []benchJobSpec{
		{"randread-4k-qd32", wire.OpRead, 4096, 32, false},
		{"randwrite-4k-qd32", wire.OpWrite, 4096, 32, false},
		{"read-128k-qd8", wire.OpRead, 128 << 10, 8, true},
		{"write-128k-qd8", wire.OpWrite, 128 << 10, 8, true},
	}
	// The export is a file in memory (tmpfs: the exporter copies through a
	// mapping, no disk), filled with data so that reads are not reads of
	// holes: what is measured is the protocol and the crypto, not a disk.
	path := memExport(b, benchSize)
	for _, s := range append([]crypto.Suite{crypto.None}, crypto.Suites...) {
		// Pool sizes: 0 is inline (no pool); 1 and 2 give each side a
		// pool of that many workers, which only payloads above
		// crypto.DefaultInline reach (the 128 KiB jobs).
		for workers := range 3 {
			if workers > 0 && s == crypto.None {
				continue
			}
			cc := cryptoCfg(s)
			cfg := export.Config{
				Exports: []export.ExportConfig{{Name: "disk", Path: path}},
				Access:  export.ACL{AllowAll: export.ReadWrite},
				Crypto:  cc,
			}
			var cpool *crypto.Pool
			if workers > 0 {
				cfg.CryptoPool = crypto.NewPool(crypto.PoolConfig{Min: workers, Max: workers})
				cpool = crypto.NewPool(crypto.PoolConfig{Min: workers, Max: workers})
			}
			_, addr := exporttest.Start(b, cfg, exporttest.TCP4)
			for _, j := range jobs {
				if workers > 0 && j.bs <= crypto.DefaultInline(s) {
					continue // the same as inline
				}
				b.Run(fmt.Sprintf("%v/pool%d/%s", s, workers, j.name), func(b *testing.B) {
					benchJob(b, Options{URL: addr + "/disk", Crypto: cc, CryptoPool: cpool}, j)
				})
			}
			if workers > 0 {
				b.Cleanup(cfg.CryptoPool.Close)
				b.Cleanup(cpool.Close)
			}
		}
	}
}

// TestCryptoSteadyStateAllocs: with a checksum and with a cipher, a client
// and an exporter in steady state allocate nothing per request (both
// sides counted: the exporter runs in this process).
func TestCryptoSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under -race")
	}
	if testing.Short() {
		t.Skip("short")
	}
	path := exporttest.File(t, benchSize)
	for _, s := range []crypto.Suite{crypto.CRC32C, crypto.AES256GCM} {
		cc := cryptoCfg(s)
		cfg := export.Config{
			Exports: []export.ExportConfig{{Name: "disk", Path: path}},
			Access:  export.ACL{AllowAll: export.ReadWrite},
			Crypto:  cc,
		}
		_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
		for _, j := range []benchJobSpec{
			{"randread-4k-qd32", wire.OpRead, 4096, 32, false},
			{"write-128k-qd8", wire.OpWrite, 128 << 10, 8, true},
		} {
			r := testing.Benchmark(func(b *testing.B) {
				if b.N < 2000 {
					b.N = 2000
				}
				benchJob(b, Options{URL: addr + "/disk", Crypto: cc}, j)
			})
			// Each round dials (a handshake allocates) and its first
			// requests fill the pools and the arena: allow a few hundred
			// allocations in all, not one per request.
			if perOp := float64(r.MemAllocs) / float64(r.N); perOp > 0.1 {
				t.Errorf("%v %s: %.3f allocations per request (%d for %d)", s, j.name, perOp, r.MemAllocs, r.N)
			} else {
				t.Logf("%v %s: %d allocations for %d requests", s, j.name, r.MemAllocs, r.N)
			}
		}
	}
}
