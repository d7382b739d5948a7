package export_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

const benchFileSize = 256 << 20

// benchFiles are fully written 256 MiB files (reads hit allocated
// blocks, not unwritten extents): "disk" on the root filesystem (the real
// thing; the virtual disk's latency dominates), "tmpfs" in /dev/shm when
// there is one (O_DIRECT is accepted and there is no device: the
// exporter's own CPU cost per request shows).
func benchFiles(b *testing.B) map[string]string {
	files := map[string]string{"disk": benchFile(b, b.TempDir())}
	var sfs unix.Statfs_t
	if unix.Statfs("/dev/shm", &sfs) == nil && sfs.Type == unix.TMPFS_MAGIC {
		dir, err := os.MkdirTemp("/dev/shm", "dst-export-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		files["tmpfs"] = benchFile(b, dir)
	}
	return files
}

func benchFile(b *testing.B, dir string) string {
	path := filepath.Join(dir, "bench.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	chunk := pattern(1<<20, 1)
	for off := 0; off < benchFileSize; off += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return path
}

type benchCase struct {
	name  string
	op    wire.Op
	size  int
	depth int
	seq   bool
	conns int
}

// BenchmarkExport: a pipelined raw client against the exporter over
// loopback TCP, on a 256 MiB O_DIRECT file. One op is one request; ns/op,
// allocs/op (client and server together) and MB/s are per request, IOPS
// is reported as a metric.
func BenchmarkExport(b *testing.B) {
	files := benchFiles(b)
	cases := []benchCase{
		{"randread-4k-qd1", wire.OpRead, 4 << 10, 1, false, 1},
		{"randread-4k-qd32", wire.OpRead, 4 << 10, 32, false, 1},
		{"randwrite-4k-qd1", wire.OpWrite, 4 << 10, 1, false, 1},
		{"randwrite-4k-qd32", wire.OpWrite, 4 << 10, 32, false, 1},
		{"seqread-128k-qd8", wire.OpRead, 128 << 10, 8, true, 1},
		{"seqwrite-128k-qd8", wire.OpWrite, 128 << 10, 8, true, 1},
		{"randread-4k-qd32-4conns", wire.OpRead, 4 << 10, 32, false, 4},
		{"randwrite-4k-qd32-4conns", wire.OpWrite, 4 << 10, 32, false, 4},
	}
	for _, where := range []string{"disk", "tmpfs"} {
		path := files[where]
		if path == "" {
			continue
		}
		for _, bc := range cases {
			b.Run(where+"/"+bc.name, func(b *testing.B) {
				cfg := config(path)
				cfg.Log = zap.NewNop()
				runBench(b, cfg, bc)
			})
		}
	}
}

func runBench(b *testing.B, cfg export.Config, bc benchCase) {
	srv, err := export.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	l, u, err := transport.Listen(context.Background(), exporttest.TCP4, transport.Options{})
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	defer func() {
		srv.Close()
		<-served
	}()
	clients := make([]*benchClient, bc.conns)
	for i := range clients {
		c := exporttest.Connect(b, u.String(), "disk")
		clients[i] = newBenchClient(c, bc, uint64(i))
	}
	b.SetBytes(int64(bc.size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		n := b.N / bc.conns
		if i == 0 {
			n += b.N % bc.conns
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.run(n); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "IOPS")
}

// benchClient keeps depth requests in flight on one connection: a sender
// and a receiver goroutine, a semaphore between them, no allocation per
// request. The sender writes every request it may send at once with one
// writev, as a real client does.
type benchClient struct {
	nc      net.Conn
	r       *bufio.Reader
	bc      benchCase
	rng     *rand.Rand
	hdrs    []byte // depth request headers
	payload []byte
	bufs    [][]byte
	iov     net.Buffers
	rbuf    []byte
	sem     chan struct{}
	next    uint64
	id      uint64
}

func newBenchClient(c *exporttest.Client, bc benchCase, seed uint64) *benchClient {
	return &benchClient{
		nc: c.Conn, r: c.R, bc: bc,
		hdrs:    make([]byte, bc.depth*wire.RequestHeaderSize),
		payload: pattern(bc.size, seed),
		bufs:    make([][]byte, 0, 2*bc.depth),
		rng:     rand.New(rand.NewPCG(seed, 42)),
		rbuf:    make([]byte, bc.size),
		sem:     make(chan struct{}, bc.depth),
		next:    seed * (benchFileSize / 4), // each connection its own region
	}
}

func (c *benchClient) offset() uint64 {
	if c.bc.seq {
		off := c.next % benchFileSize
		c.next += uint64(c.bc.size)
		return off
	}
	return c.rng.Uint64N(benchFileSize/uint64(c.bc.size)) * uint64(c.bc.size)
}

func (c *benchClient) run(n int) error {
	errc := make(chan error, 1)
	go func() { errc <- c.receive(n) }()
	for sent := 0; sent < n; {
		c.sem <- struct{}{}
		k := 1
	more:
		for k < c.bc.depth && sent+k < n {
			select {
			case c.sem <- struct{}{}:
				k++
			default:
				break more
			}
		}
		bufs := c.bufs[:0]
		for i := range k {
			c.id++
			h := c.hdrs[i*wire.RequestHeaderSize : (i+1)*wire.RequestHeaderSize]
			r := wire.Request{Op: c.bc.op, ID: c.id, Offset: c.offset(), Length: uint32(c.bc.size)}
			r.Put(h)
			bufs = append(bufs, h)
			if c.bc.op == wire.OpWrite {
				bufs = append(bufs, c.payload)
			}
		}
		c.bufs = bufs
		c.iov = bufs
		if _, err := c.iov.WriteTo(c.nc); err != nil {
			return err
		}
		sent += k
	}
	return <-errc
}

func (c *benchClient) receive(n int) error {
	var hdr [wire.ReplyHeaderSize]byte
	for range n {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return err
		}
		r, err := wire.ParseReply(hdr[:])
		if err != nil {
			return err
		}
		if r.Status != 0 {
			return fmt.Errorf("%v id %d: %v", r.Op, r.ID, r.Status)
		}
		if r.Length > 0 {
			if _, err := io.ReadFull(c.r, c.rbuf[:r.Length]); err != nil {
				return err
			}
		}
		<-c.sem
	}
	return nil
}

// TestSteadyStateAllocs: once warmed up, the exporter allocates nothing
// per request (ops and buffers are pooled, iovecs and queues reused): a
// pipelined client (itself allocation-free but for a goroutine and a
// channel per run) does reads and writes of 4 KiB and 128 KiB, and the
// whole process allocates a few dozen times per run, whatever its length.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under -race")
	}
	if testing.Short() {
		t.Skip("short")
	}
	path := exporttest.File(t, benchFileSize)
	for _, bc := range []benchCase{
		{"read-4k", wire.OpRead, 4 << 10, 16, false, 1},
		{"write-4k", wire.OpWrite, 4 << 10, 16, false, 1},
		{"read-128k", wire.OpRead, 128 << 10, 4, true, 1},
		{"write-128k", wire.OpWrite, 128 << 10, 4, true, 1},
	} {
		t.Run(bc.name, func(t *testing.T) {
			cfg := config(path)
			cfg.Log = zap.NewNop()
			_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			c := newBenchClient(exporttest.Connect(t, addr, "disk"), bc, 1)
			if err := c.run(2000); err != nil { // warm up
				t.Fatal(err)
			}
			n := 20000
			if bc.size > 4<<10 {
				n = 5000
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if err := c.run(n); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			if allocs := after.Mallocs - before.Mallocs; allocs > 128+uint64(n)/200 {
				t.Fatalf("%d allocations for %d requests", allocs, n)
			} else {
				t.Logf("%d allocations for %d requests", allocs, n)
			}
		})
	}
}
