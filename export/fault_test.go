package export_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// startOwned starts a server that the test stops itself (Close). It
// returns the server, its URL and a stop function that waits for Serve.
func startOwned(t *testing.T, cfg export.Config) (*export.Server, string, func()) {
	t.Helper()
	cfg.Log = exporttest.TestLogger(t)
	s, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, u, err := transport.Listen(context.Background(), exporttest.TCP4, transport.Options{})
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			s.Close()
			if err := <-done; err != nil && !errors.Is(err, export.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, u.String(), stop
}

// TestStorageCrashKeepsDurable: the exporter acknowledges writes, FUA
// writes and a flush, then crashes (storage crash model): an acknowledged
// FUA write survives, a write followed by an acknowledged flush survives,
// and the writes acknowledged without a flush after them come back old or
// new, block by block (both happen: nothing else is promised).
func TestStorageCrashKeepsDurable(t *testing.T) {
	const bs = 4096
	for seed := uint64(1); seed <= 3; seed++ {
		path := exporttest.File(t, 1<<20)
		faults := &backend.Faults{CrashModel: true, Seed: seed}
		cfg := config(path)
		cfg.Exports[0].Faults = faults
		_, addr, stop := startOwned(t, cfg)
		c := exporttest.Connect(t, addr, "disk")

		flushed := pattern(bs, seed*10+1) // at 0, then a flush
		fua := pattern(bs, seed*10+2)     // at 64 KiB, FUA, after the flush
		c.MustDo(write(1, 0, flushed), flushed, wire.StatusOK)
		c.MustDo(wire.Request{Op: wire.OpFlush, ID: 2}, nil, wire.StatusOK)
		r := write(3, 64<<10, fua)
		r.Flags = wire.FlagFUA
		c.MustDo(r, fua, wire.StatusOK)
		// 32 blocks written after the flush, never made durable.
		volatile := make([][]byte, 32)
		for i := range volatile {
			volatile[i] = pattern(bs, seed*1000+uint64(i))
			c.MustDo(write(uint64(10+i), uint64(128<<10+i*bs), volatile[i]), volatile[i], wire.StatusOK)
		}
		// The storage crashes with the exporter idle; the server's final
		// sync then fails (the disk is gone), and the server goes.
		res, err := faults.Crash()
		if err != nil {
			t.Fatal(err)
		}
		c.MustDo(write(100, 0, fua), fua, wire.StatusEIO)
		c.Close()
		stop()
		if got := fileAt(t, path, 0, bs); !bytes.Equal(got, flushed) {
			t.Fatalf("seed %d: the write before an acknowledged flush was lost", seed)
		}
		if got := fileAt(t, path, 64<<10, bs); !bytes.Equal(got, fua) {
			t.Fatalf("seed %d: the acknowledged FUA write was lost", seed)
		}
		// The model picks per logical block (512 bytes or 4 KiB): check
		// every 512-byte sector of the unflushed blocks.
		old, kept := 0, 0
		for i, want := range volatile {
			got := fileAt(t, path, int64(128<<10+i*bs), bs)
			for o := 0; o < bs; o += 512 {
				switch g := got[o : o+512]; {
				case bytes.Equal(g, want[o:o+512]):
					kept++
				case isZero(g):
					old++
				default:
					t.Fatalf("seed %d: sector %d of unflushed block %d is neither old nor new", seed, o/512, i)
				}
			}
		}
		if res.Reverted == 0 || res.Kept == 0 || old == 0 || kept == 0 {
			t.Fatalf("seed %d: crash %d reverted, %d kept; %d sectors old, %d new: the crash must lose some unflushed writes", seed, res.Reverted, res.Kept, old, kept)
		}
		t.Logf("seed %d: after the crash %d unflushed sectors are old, %d new (%d logical blocks reverted, %d kept)", seed, old, kept, res.Reverted, res.Kept)
	}
}

// TestStorageEIO: a storage EIO on an offset range reaches the client as
// an EIO reply, once per request (a real error: the exporter does not
// retry it), while other offsets and reads keep working.
func TestStorageEIO(t *testing.T) {
	path := exporttest.File(t, 1<<20)
	var mu sync.Mutex
	var lines []string
	faults := &backend.Faults{
		EIO: []backend.EIORule{{Op: backend.OpWrite, Off: 256 << 10, Len: 4096}},
		Log: func(s string) { mu.Lock(); lines = append(lines, s); mu.Unlock() },
	}
	cfg := config(path)
	cfg.Exports[0].Faults = faults
	_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	data := pattern(8192, 5)
	c.MustDo(write(1, 252<<10, data), data, wire.StatusEIO) // overlaps the range
	c.MustDo(write(2, 0, data), data, wire.StatusOK)
	if got := c.MustDo(read(3, 0, 8192), nil, wire.StatusOK); !bytes.Equal(got, data) {
		t.Fatal("read back after a storage EIO elsewhere differs")
	}
	c.MustDo(read(4, 256<<10, 4096), nil, wire.StatusOK) // reads are not in the rule
	if st := faults.Stats(); st.EIO != 1 {
		t.Errorf("storage saw %d EIOs, want 1 (no retry)", st.EIO)
	}
	if !isZero(fileAt(t, path, 252<<10, 8192)) {
		t.Error("the failed write reached the file")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 1 || !strings.Contains(lines[0], "EIO on write of 8192 bytes at offset 258048") {
		t.Errorf("fault log %q", lines)
	}
}
