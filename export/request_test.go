package export_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
)

// TestRequests runs every request type against a real O_DIRECT file over
// every transport.
func TestRequests(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) {
			path := exporttest.File(t, testSize)
			roPath := exporttest.File(t, testSize)
			cfg := config(path)
			cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "ro", Path: roPath, ReadOnly: true})
			_, addr := exporttest.Start(t, cfg, tr.URL)
			c := exporttest.Connect(t, addr, "disk")
			if c.Welcome.ReadOnly || c.Welcome.Features != exporttest.AllFeatures {
				t.Fatalf("welcome: read-only %v, features %v", c.Welcome.ReadOnly, c.Welcome.Features)
			}
			id := uint64(0)
			next := func() uint64 { id++; return id }

			t.Run("roundtrip", func(t *testing.T) { roundTrip(t, c.For(t), path, next) })

			t.Run("fua", func(t *testing.T) {
				c := c.For(t)
				data := pattern(64<<10, 7)
				r := write(next(), 1<<20, data)
				r.Flags = wire.FlagFUA
				c.MustDo(r, data, wire.StatusOK)
				if !bytes.Equal(fileAt(t, path, 1<<20, len(data)), data) {
					t.Fatal("FUA write not in the file")
				}
			})

			t.Run("flush", func(t *testing.T) {
				c := c.For(t)
				c.MustDo(wire.Request{Op: wire.OpFlush, ID: next()}, nil, wire.StatusOK)
			})

			t.Run("discard", func(t *testing.T) {
				c := c.For(t)
				const off, n = 4 << 20, 1 << 20
				data := pattern(n, 8)
				c.MustDo(write(next(), off, data), data, wire.StatusOK)
				c.MustDo(wire.Request{Op: wire.OpDiscard, ID: next(), Offset: off, Length: n}, nil, wire.StatusOK)
				if got := c.MustDo(read(next(), off, n), nil, wire.StatusOK); !isZero(got) {
					t.Fatal("discarded range does not read as zeroes")
				}
				if !isZero(fileAt(t, path, off, n)) {
					t.Fatal("discarded range of the file is not zero")
				}
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				hole, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
				if err != nil || hole != off {
					t.Fatalf("SEEK_HOLE from %d = %d, %v: the discard left no hole", off, hole, err)
				}
			})

			t.Run("write_zeroes", func(t *testing.T) {
				c := c.For(t)
				for _, flags := range []wire.Flags{0, wire.FlagNoUnmap} {
					const off, n = 6 << 20, 256 << 10
					data := pattern(n, 9)
					c.MustDo(write(next(), off, data), data, wire.StatusOK)
					c.MustDo(wire.Request{Op: wire.OpWriteZeroes, Flags: flags, ID: next(), Offset: off, Length: n}, nil, wire.StatusOK)
					if got := c.MustDo(read(next(), off, n), nil, wire.StatusOK); !isZero(got) {
						t.Fatalf("flags %v: zeroed range does not read as zeroes", flags)
					}
				}
			})

			t.Run("bad_range", func(t *testing.T) {
				c := c.For(t)
				before := sum(fileAt(t, path, testSize-bs, bs))
				data := pattern(2*bs, 10)
				for _, tc := range []struct {
					name string
					req  wire.Request
					data []byte
					want wire.Status
				}{
					{"read past end", read(0, testSize, bs), nil, wire.StatusEINVAL},
					{"read across end", read(0, testSize-bs, 2*bs), nil, wire.StatusEINVAL},
					{"read misaligned offset", read(0, 100+bs, bs), nil, wire.StatusEINVAL},
					{"read misaligned length", read(0, 0, bs+100), nil, wire.StatusEINVAL},
					{"write across end", write(0, testSize-bs, data), data, wire.StatusENOSPC},
					{"write misaligned", write(0, 100, data[:bs]), data[:bs], wire.StatusEINVAL},
					{"discard past end", wire.Request{Op: wire.OpDiscard, Offset: testSize, Length: bs}, nil, wire.StatusENOSPC},
					{"write zeroes misaligned", wire.Request{Op: wire.OpWriteZeroes, Offset: 0, Length: 1000}, nil, wire.StatusEINVAL},
					{"offset overflow", read(0, ^uint64(0)-bs+1, bs), nil, wire.StatusEINVAL},
					{"write offset overflow", write(0, ^uint64(0)-bs+1, data[:bs]), data[:bs], wire.StatusEINVAL},
				} {
					tc.req.ID = next()
					rep, _, err := c.Do(tc.req, tc.data)
					if err != nil || rep.Status != tc.want {
						t.Fatalf("%s: status %v, %v; want %v", tc.name, rep.Status, err, tc.want)
					}
				}
				if sum(fileAt(t, path, testSize-bs, bs)) != before {
					t.Fatal("a refused write changed the file")
				}
				// The connection is still usable.
				c.MustDo(read(next(), 0, bs), nil, wire.StatusOK)
			})

			t.Run("unsupported", func(t *testing.T) {
				// A client that understands only RESUME: every op or
				// flag that needs a feature is EOPNOTSUPP.
				u := exporttest.Dial(t, addr)
				w, err := u.Hello(&wire.Hello{Export: "disk", Features: wire.FeatResume})
				if err != nil {
					t.Fatal(err)
				}
				if w.Features != wire.FeatResume {
					t.Fatalf("features %v, want RESUME only", w.Features)
				}
				data := pattern(bs, 11)
				fua := write(1, 0, data)
				fua.Flags = wire.FlagFUA
				u.MustDo(fua, data, wire.StatusEOPNOTSUPP)
				u.MustDo(wire.Request{Op: wire.OpFlush, ID: 2}, nil, wire.StatusEOPNOTSUPP)
				u.MustDo(wire.Request{Op: wire.OpDiscard, ID: 3, Length: bs}, nil, wire.StatusEOPNOTSUPP)
				u.MustDo(wire.Request{Op: wire.OpWriteZeroes, ID: 4, Length: bs}, nil, wire.StatusEOPNOTSUPP)
				u.MustDo(write(5, 0, data), data, wire.StatusOK)
			})

			t.Run("read_only_export", func(t *testing.T) {
				ro := exporttest.Connect(t, addr, "ro")
				if !ro.Welcome.ReadOnly || ro.Welcome.Features != wire.FeatResume {
					t.Fatalf("ro export: read-only %v, features %v", ro.Welcome.ReadOnly, ro.Welcome.Features)
				}
				before := sum(fileAt(t, roPath, 0, 64<<10))
				data := pattern(64<<10, 12)
				ro.MustDo(write(1, 0, data), data, wire.StatusEROFS)
				ro.MustDo(read(2, 0, bs), nil, wire.StatusOK) // the payload was skipped
				if sum(fileAt(t, roPath, 0, 64<<10)) != before {
					t.Fatal("EROFS write changed the file")
				}
			})

			t.Run("read_only_session", func(t *testing.T) {
				ro := exporttest.Dial(t, addr)
				if _, err := ro.Hello(&wire.Hello{Export: "disk", Features: exporttest.AllFeatures, WantReadOnly: true}); err != nil {
					t.Fatal(err)
				}
				if !ro.Welcome.ReadOnly {
					t.Fatal("WANT_READ_ONLY session is not read-only")
				}
				before := sum(fileAt(t, path, 8<<20, 64<<10))
				data := pattern(64<<10, 13)
				ro.MustDo(write(1, 8<<20, data), data, wire.StatusEPERM)
				ro.MustDo(wire.Request{Op: wire.OpDiscard, ID: 2, Offset: 8 << 20, Length: 64 << 10}, nil, wire.StatusEPERM)
				ro.MustDo(wire.Request{Op: wire.OpWriteZeroes, ID: 3, Offset: 8 << 20, Length: 64 << 10}, nil, wire.StatusEPERM)
				ro.MustDo(read(4, 8<<20, bs), nil, wire.StatusOK)
				if sum(fileAt(t, path, 8<<20, 64<<10)) != before {
					t.Fatal("EPERM write changed the file")
				}
			})

			t.Run("ping", func(t *testing.T) {
				c := c.For(t)
				r := c.MustDo(wire.Request{Op: wire.OpPing, ID: 1 << 63}, nil, wire.StatusOK)
				if r != nil {
					t.Fatal("PING reply with a payload")
				}
			})
		})
	}
}

// roundTrip writes blocks of several sizes at random places, pipelined,
// reads them back pipelined and compares checksums (and the file).
func roundTrip(t *testing.T, c *exporttest.Client, path string, next func() uint64) {
	rng := rand.New(rand.NewPCG(1, 2))
	type ext struct {
		off  uint64
		data []byte
	}
	var exts []ext
	used := map[uint64]bool{} // 1 MiB slots, so that extents do not overlap
	for len(exts) < 12 {
		slot := rng.Uint64N(testSize >> 20)
		if used[slot] {
			continue
		}
		used[slot] = true
		n := bs << rng.IntN(9) // 4 KiB .. 1 MiB
		exts = append(exts, ext{off: slot << 20, data: pattern(n, rng.Uint64())})
	}
	ids := map[uint64]int{}
	for i, e := range exts {
		id := next()
		ids[id] = i
		if err := c.Send(write(id, e.off, e.data), e.data); err != nil {
			t.Fatal(err)
		}
	}
	for range exts {
		r, _, err := c.Recv()
		if err != nil || r.Status != wire.StatusOK || r.Op != wire.OpWrite {
			t.Fatalf("write reply %+v, %v", r, err)
		}
		delete(ids, r.ID)
	}
	if len(ids) != 0 {
		t.Fatalf("writes without a reply: %v", ids)
	}
	for i, e := range exts {
		id := next()
		ids[id] = i
		if err := c.Send(read(id, e.off, len(e.data)), nil); err != nil {
			t.Fatal(err)
		}
	}
	for range exts {
		r, p, err := c.Recv()
		if err != nil || r.Status != wire.StatusOK || r.Op != wire.OpRead {
			t.Fatalf("read reply %+v, %v", r, err)
		}
		i, ok := ids[r.ID]
		if !ok {
			t.Fatalf("reply for unknown id %d", r.ID)
		}
		delete(ids, r.ID)
		if sum(p) != sum(exts[i].data) {
			t.Fatalf("read %d bytes at %d: checksum differs", len(p), exts[i].off)
		}
	}
	for _, e := range exts {
		if sum(fileAt(t, path, int64(e.off), len(e.data))) != sum(e.data) {
			t.Fatalf("file at %d differs from what was written", e.off)
		}
	}
}

// transfer runs write/read/verify cycles on its own connection until stop
// is closed, and reports the first error.
func transfer(t *testing.T, addr string, base uint64, stop <-chan struct{}) <-chan error {
	c := exporttest.Connect(t, addr, "disk")
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for i := uint64(1); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			data := pattern(64<<10, base+i)
			off := base + (i%8)*(64<<10)
			if r, _, err := c.Do(write(2*i, off, data), data); err != nil || r.Status != 0 {
				errc <- errors.Join(err, errors.New("write "+r.Status.String()))
				return
			}
			r, p, err := c.Do(read(2*i+1, off, len(data)), nil)
			if err != nil || r.Status != 0 || !bytes.Equal(p, data) {
				errc <- errors.Join(err, errors.New("read back differs or failed: "+r.Status.String()))
				return
			}
		}
	}()
	return errc
}

// TestMalformedFrames: each framing error closes that connection, with a
// logged reason, while another client's transfer goes on unaffected, on
// every transport.
func TestMalformedFrames(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) { malformedFrames(t, tr.URL) })
	}
}

func malformedFrames(t *testing.T, url string) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	log, logs := exporttest.ObservedLogger(t)
	cfg.Log = log
	_, addr := exporttest.Start(t, cfg, url)
	stop := make(chan struct{})
	errc := transfer(t, addr, 8<<20, stop)

	hdr := func(mod func(b []byte)) []byte {
		b := make([]byte, wire.RequestHeaderSize)
		(&wire.Request{Op: wire.OpRead, ID: 1, Length: bs}).Put(b)
		mod(b)
		return b
	}
	for _, tc := range []struct {
		name   string
		frame  []byte
		reason string
	}{
		{"bad magic", hdr(func(b []byte) { copy(b, "XSTQ") }), "magic"},
		{"unknown op", hdr(func(b []byte) { b[4] = 9 }), "unknown op 9"},
		{"goodbye op", hdr(func(b []byte) { b[4] = byte(wire.OpGoodbye) }), "reply-only"},
		{"reserved byte", hdr(func(b []byte) { b[5] = 1 }), "reserved"},
		{"reserved word", hdr(func(b []byte) { b[30] = 1 }), "reserved"},
		{"unknown flag", hdr(func(b []byte) { b[6] = 4 }), "unknown flag"},
		{"FUA on read", hdr(func(b []byte) { b[6] = 1 }), "FUA on READ"},
		{"oversize length", hdr(func(b []byte) { b[24], b[25], b[26] = 0, 0, 0x20 }), "exceeds max transfer"},
		{"zero length", hdr(func(b []byte) { b[24], b[25] = 0, 0 }), "length 0"},
		{"flush with length", hdr(func(b []byte) { b[4] = byte(wire.OpFlush) }), "must be 0"},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"), "magic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := exporttest.Connect(t, addr, "disk")
			// A good request first: the connection works.
			c.MustDo(read(100, 0, bs), nil, wire.StatusOK)
			n := len(logs.FilterMessage("closing connection: protocol error").All())
			if err := c.SendRaw(tc.frame); err != nil {
				t.Fatal(err)
			}
			c.ExpectClosed(5 * time.Second)
			waitFor(t, 5*time.Second, "the log line", func() bool {
				return len(logs.FilterMessage("closing connection: protocol error").All()) > n
			})
			e := logs.FilterMessage("closing connection: protocol error").All()[n]
			if msg := e.ContextMap()["error"]; msg == nil || !bytes.Contains([]byte(msg.(string)), []byte(tc.reason)) {
				t.Fatalf("logged reason %v, want it to mention %q", msg, tc.reason)
			}
		})
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("the other client's transfer failed: %v", err)
	}
}

// TestMaxInflight: a client that has more transactions outstanding than
// MAX_INFLIGHT is closed; one at the limit is served.
func TestMaxInflight(t *testing.T) {
	path := exporttest.File(t, testSize)
	srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	c := exporttest.Dial(t, addr)
	if _, err := c.Hello(&wire.Hello{Export: "disk", Features: exporttest.AllFeatures, MaxInflight: 4}); err != nil {
		t.Fatal(err)
	}
	if c.Welcome.MaxInflight != 4 {
		t.Fatalf("MAX_INFLIGHT %d, want the client's 4", c.Welcome.MaxInflight)
	}
	srv.Hold(true)
	for i := uint64(1); i <= 4; i++ {
		if err := c.Send(read(i, i*bs, bs), nil); err != nil {
			t.Fatal(err)
		}
	}
	// 4 outstanding: a ping still works.
	if before, err := c.Ping(1 << 63); err != nil || len(before) != 0 {
		t.Fatalf("ping: %v, %d replies before it", err, len(before))
	}
	srv.Hold(false)
	for range 4 {
		if r, _, err := c.Recv(); err != nil || r.Status != 0 {
			t.Fatalf("reply %+v, %v", r, err)
		}
	}
	srv.Hold(true)
	defer srv.Hold(false)
	for i := uint64(11); i <= 15; i++ {
		if err := c.Send(read(i, i*bs, bs), nil); err != nil {
			t.Fatal(err)
		}
	}
	c.ExpectClosed(5 * time.Second)
}

// TestBufferBackpressure: with a small MaxBufferBytes the connection
// stops reading while buffers are held, and everything completes once they
// come back: backpressure, never an error. On every transport.
func TestBufferBackpressure(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) { bufferBackpressure(t, tr.URL) })
	}
}

func bufferBackpressure(t *testing.T, url string) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.MaxBufferBytes = 64 << 10
	srv, addr := exporttest.Start(t, cfg, url)
	c := exporttest.Connect(t, addr, "disk")
	srv.Hold(true)
	const n = 64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the sender may block: the exporter stops reading
		defer wg.Done()
		for i := uint64(1); i <= n; i++ {
			data := pattern(bs, i)
			if err := c.Send(write(i, i*bs, data), data); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	waitFor(t, 5*time.Second, "16 writes executing", func() bool { return srv.Executing() == 16 })
	time.Sleep(50 * time.Millisecond)
	if e := srv.Executing(); e != 16 {
		t.Fatalf("%d ops executing with a 64 KiB budget of 4 KiB buffers, want 16", e)
	}
	srv.Hold(false)
	wg.Wait()
	for range n {
		if r, _, err := c.Recv(); err != nil || r.Status != 0 {
			t.Fatalf("reply %+v, %v", r, err)
		}
	}
	for i := uint64(1); i <= n; i++ {
		if !bytes.Equal(fileAt(t, path, int64(i*bs), bs), pattern(bs, i)) {
			t.Fatalf("block %d differs", i)
		}
	}
}

// TestIdleTimeout: a silent connection with nothing in flight is closed.
func TestIdleTimeout(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.IdleTimeout = 200 * time.Millisecond
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	// Not while something is executing.
	srv.Hold(true)
	if err := c.Send(read(1, 0, bs), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	srv.Hold(false)
	if r, _, err := c.Recv(); err != nil || r.Status != 0 {
		t.Fatalf("reply after a long execution: %+v, %v", r, err)
	}
	start := time.Now()
	c.ExpectClosed(5 * time.Second)
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("closed after %v of silence, before the idle timeout", d)
	}
	_, err := c.Conn.Write(make([]byte, 40))
	_ = err // the peer is gone; a write may or may not fail yet
	if _, err := c.R.ReadByte(); !errors.Is(err, io.EOF) && err == nil {
		t.Fatal("connection still readable")
	}
}
