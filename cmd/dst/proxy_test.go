package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/txn"
)

func TestProxyBadFlags(t *testing.T) {
	to := []string{"--listen", "dst://127.0.0.1:0", "--to", "dst://127.0.0.1:1"}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"proxy"}, "--listen is required"},
		{[]string{"proxy", "--listen", "dst://127.0.0.1:0"}, "--to is required"},
		{[]string{"proxy", "--listen", "foo://x", "--to", "dst://h:1"}, "--listen"},
		{[]string{"proxy", "--listen", "dst://127.0.0.1:0/disk", "--to", "dst://h:1"}, "names no export"},
		{[]string{"proxy", "--listen", "dst://127.0.0.1:0", "--to", "nope://h"}, "--to"},
		{append([]string{"proxy", "--drop", "1.5"}, to...), "--drop 1.5"},
		{append([]string{"proxy", "--corrupt", "-0.1"}, to...), "--corrupt"},
		{append([]string{"proxy", "--reorder", "NaN"}, to...), "--reorder"},
		{append([]string{"proxy", "--delay", "-1s"}, to...), "--delay -1s is negative"},
		{append([]string{"proxy", "--partition-every", "1s"}, to...), "go together"},
		{append([]string{"proxy", "--partition-lose"}, to...), "--partition-lose needs"},
		{append([]string{"proxy", "--stall-after", "1MiB"}, to...), "go together"},
		{append([]string{"proxy", "--stall-after", "1Q", "--stall-for", "1s"}, to...), "--stall-after"},
		{append([]string{"proxy", "--direction", "up"}, to...), "--direction"},
		{append([]string{"proxy", "extra"}, to...), "no arguments"},
		{append([]string{"proxy", "--cut-every", "soon"}, to...), "cut-every"},
	}
	for _, tt := range tests {
		err := run(tt.args...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("dst %s: %v; want a usage error mentioning %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}

// syncBuffer is an io.Writer safe for the app's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProxyCmd runs "dst proxy args..." in-process with its log observed.
// It returns the URL it listens on, the observed log, and a stop function
// (the end of its context, as a signal would) returning the command's
// error.
func startProxyCmd(t *testing.T, args ...string) (string, *observer.ObservedLogs, func() error) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	prev := log
	log = zap.New(core)
	app := newApp()
	app.Before = nil // keep the observed logger
	var out syncBuffer
	app.Writer = &out
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.RunContext(ctx, append([]string{"dst", "proxy"}, args...)) }()
	var stopped bool
	var stopErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			stopErr = <-done
			log = prev
		}
		return stopErr
	}
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if line, ok := strings.CutPrefix(strings.TrimSpace(out.String()), "listening "); ok {
			return line, logs, stop
		}
		select {
		case err := <-done:
			stopped = true
			log = prev
			t.Fatalf("dst proxy exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("dst proxy printed no listening line in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blockDev does synchronous block I/O on a txn.Client.
type blockDev struct {
	c    *txn.Client
	mu   sync.Mutex
	next txn.Handle
	wait map[txn.Handle]chan syscall.Errno
}

func newBlockDev(c *txn.Client) *blockDev {
	d := &blockDev{c: c, wait: map[txn.Handle]chan syscall.Errno{}}
	c.SetDeliver(func(comps []txn.Completion) {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, cp := range comps {
			ch := d.wait[cp.Handle]
			delete(d.wait, cp.Handle)
			ch <- cp.Err
		}
	})
	return d
}

func (d *blockDev) do(op wire.Op, off uint64, buf []byte) error {
	ch := make(chan syscall.Errno, 1)
	d.mu.Lock()
	h := d.next
	d.next++
	d.wait[h] = ch
	d.mu.Unlock()
	d.c.Submit(h, op, 0, off, uint32(len(buf)), buf)
	if e := <-ch; e != 0 {
		return e
	}
	return nil
}

func clientOpts(url string) txn.Options {
	// A corrupted handshake message (not protected by checksums) stalls
	// a dial until the handshake timeout: keep it well inside the
	// request's budget of timeout x (retries+1).
	return txn.Options{URL: url, Tick: 10 * time.Millisecond, Timeout: 300 * time.Millisecond, Retries: 30,
		Ping: 100 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Capacity: 64, HandshakeTimeout: time.Second}
}

func exportConfigFor(path string, faults *backend.Faults) export.Config {
	return export.Config{
		Exports: []export.ExportConfig{{Name: "disk", Path: path, Faults: faults}},
		Access:  export.ACL{AllowAll: export.ReadWrite},
	}
}

// TestProxyClientDataIntact: a txn.Client writes and reads through dst
// proxy while it cuts every connection, delays and reorders frames both
// ways; every read returns the last data written, the client reconnected,
// and the proxy logged the faults and stops cleanly.
func TestProxyClientDataIntact(t *testing.T) {
	const bs, blocks, workers, writes = 4096, 256, 8, 1600
	path := exporttest.File(t, bs*blocks)
	_, addr := exporttest.Start(t, exportConfigFor(path, nil), exporttest.TCP4)
	purl, logs, stop := startProxyCmd(t, "--listen", "dst://127.0.0.1:0", "--to", addr, "--seed", "7",
		"--cut-every", "150ms", "--delay", "50us", "--jitter", "200us", "--reorder", "0.2")
	c, err := txn.Dial(context.Background(), clientOpts(purl+"/disk"))
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	want := make([][]byte, blocks)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(7, uint64(w)))
			for range writes / workers {
				b := w + workers*rng.IntN(blocks/workers) // blocks of this worker only
				data := make([]byte, bs)
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				if err := d.do(wire.OpWrite, uint64(b*bs), data); err != nil {
					errs <- fmt.Errorf("write block %d: %w", b, err)
					return
				}
				want[b] = data
				if rng.IntN(4) == 0 {
					got := make([]byte, bs)
					if err := d.do(wire.OpRead, uint64(b*bs), got); err != nil {
						errs <- fmt.Errorf("read block %d: %w", b, err)
						return
					}
					if !bytes.Equal(got, data) {
						errs <- fmt.Errorf("block %d reads other data than just written", b)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checked := 0
	for b, data := range want {
		if data == nil {
			continue
		}
		got := make([]byte, bs)
		if err := d.do(wire.OpRead, uint64(b*bs), got); err != nil {
			t.Fatalf("final read of block %d: %v", b, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("block %d lost its last write", b)
		}
		checked++
	}
	st := c.Stats()
	if err := c.Close(context.Background()); err != nil {
		t.Errorf("client close: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("dst proxy: %v", err)
	}
	count := func(kind string) int {
		return logs.FilterMessage("fault injected").FilterField(zap.String("kind", kind)).Len()
	}
	cuts, reorders := count("cut"), count("reorder")
	if st.Reconnects == 0 || cuts == 0 || reorders == 0 {
		t.Fatalf("reconnects %d, cuts %d, reorders %d: the faults did not happen", st.Reconnects, cuts, reorders)
	}
	if logs.FilterMessage("proxy stopped").Len() != 1 {
		t.Error("no \"proxy stopped\" line")
	}
	t.Logf("%d writes, %d blocks checked; %d cuts, %d reorders logged; client: %d reconnects, %d resends, %d timeouts",
		writes, checked, cuts, reorders, st.Reconnects, st.Resent, st.Timeouts)
}

// TestProxyStorageEIONotRetried: a storage EIO at the exporter reaches the
// client through the proxy as EIO at once; the client does not resend it.
func TestProxyStorageEIONotRetried(t *testing.T) {
	path := exporttest.File(t, 1<<20)
	faults := &backend.Faults{EIO: []backend.EIORule{{Op: backend.OpWrite, Off: 512 << 10, Len: 4096}}}
	_, addr := exporttest.Start(t, exportConfigFor(path, faults), exporttest.TCP4)
	purl, _, stop := startProxyCmd(t, "--listen", "dst://127.0.0.1:0", "--to", addr, "--delay", "1ms")
	c, err := txn.Dial(context.Background(), clientOpts(purl+"/disk"))
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	start := time.Now()
	err = d.do(wire.OpWrite, 512<<10, make([]byte, 4096))
	took := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on the failing range: %v, want EIO", err)
	}
	if err := d.do(wire.OpWrite, 0, make([]byte, 4096)); err != nil {
		t.Fatalf("write elsewhere: %v", err)
	}
	if took > 250*time.Millisecond {
		t.Errorf("EIO took %v: it must not wait for a timeout (300ms)", took)
	}
	if st := c.Stats(); st.Resent != 0 || faults.Stats().EIO != 1 {
		t.Errorf("client stats %+v, storage EIOs %d: want no resend, one EIO", st, faults.Stats().EIO)
	}
	c.Close(context.Background())
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestProxyCorruptWithChecksums: with crc32c checksums on both sides, bit
// flips injected by dst proxy (in headers, payloads or trailers) never
// reach the data: every block reads back what was last written, and the
// client recovered from them (resends or reconnects).
func TestProxyCorruptWithChecksums(t *testing.T) {
	const bs, blocks = 4096, 64
	suite, err := crypto.SuiteFromFlags("crc32c", "")
	if err != nil {
		t.Fatal(err)
	}
	path := exporttest.File(t, bs*blocks)
	cfg := exportConfigFor(path, nil)
	cfg.Crypto = crypto.Config{Suite: suite}
	_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	purl, logs, stop := startProxyCmd(t, "--listen", "dst://127.0.0.1:0", "--to", addr, "--seed", "5", "--corrupt", "0.05")
	o := clientOpts(purl + "/disk")
	o.Crypto = crypto.Config{Suite: suite}
	c, err := txn.Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	rng := rand.New(rand.NewPCG(5, 5))
	want := make([][]byte, blocks)
	for i := 0; i < 300; i++ {
		b := rng.IntN(blocks)
		if want[b] != nil && rng.IntN(2) == 0 {
			got := make([]byte, bs)
			if err := d.do(wire.OpRead, uint64(b*bs), got); err != nil {
				t.Fatalf("read block %d: %v", b, err)
			}
			if !bytes.Equal(got, want[b]) {
				t.Fatalf("block %d read corrupted or stale data", b)
			}
			continue
		}
		data := make([]byte, bs)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		t0 := time.Now()
		if err := d.do(wire.OpWrite, uint64(b*bs), data); err != nil {
			t.Fatalf("write block %d: %v after %v; client %+v", b, err, time.Since(t0), c.Stats())
		}
		want[b] = data
	}
	st := c.Stats()
	c.Close(context.Background())
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	flips := logs.FilterMessage("fault injected").FilterField(zap.String("kind", "corrupt")).Len()
	if flips == 0 || st.Resent+st.Reconnects == 0 {
		t.Fatalf("%d bits flipped, client %+v: no corruption was survived", flips, st)
	}
	t.Logf("%d bits flipped; client: %d resends, %d reconnects, %d timeouts", flips, st.Resent, st.Reconnects, st.Timeouts)
}
