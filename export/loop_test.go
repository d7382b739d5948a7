package export_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// TestFencingLoop is TestFencing with the request held inside the old
// connection's loop itself (read, not yet dispatched) while the session is
// resumed: once the loop goes on, the request is not executed (§5.4). On
// every transport: the ring path for sockets, the bridge for mem.
func TestFencingLoop(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) {
			path := exporttest.File(t, testSize)
			held, gate := make(chan struct{}), make(chan struct{})
			var once sync.Once
			cfg := config(path)
			export.BeforeDispatch(&cfg, func(id uint64) {
				if id == 1 {
					once.Do(func() {
						close(held)
						<-gate
					})
				}
			})
			srv, addr := exporttest.Start(t, cfg, tr.URL)
			released := false
			defer func() {
				if !released {
					close(gate)
				}
			}()
			a, b := pattern(bs, 8), pattern(bs, 9)
			c1 := exporttest.Connect(t, addr, "disk")
			if err := c1.Send(write(1, blockX, a), a); err != nil {
				t.Fatal(err)
			}
			<-held
			c2 := exporttest.Resume(t, addr, "disk", c1.Welcome.Session)
			c2.MustDo(write(2, blockX, b), b, wire.StatusOK)
			close(gate)
			released = true
			waitFor(t, 5*time.Second, "the old connection to end", func() bool { return srv.NumConns() == 1 })
			noReplies(t, c2, 1<<63)
			if !bytes.Equal(fileAt(t, path, blockX, bs), b) {
				t.Fatal("the fenced connection's write id 1 was executed after the resume")
			}
			c2.MustDo(write(1, 2*blockX, a), a, wire.StatusOK)
		})
	}
}

// TestResumeCrossConnection: writes and reads execute on the connection
// that read them; that connection is lost and the session resumed
// elsewhere before they complete (held, as on a stalled disk). Their
// replies — READ payloads included — come once each on the new connection,
// handed over between the two loops, and the resends are not executed
// again.
func TestResumeCrossConnection(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) {
			path := exporttest.File(t, testSize)
			old := pattern(256<<10, 40)
			writeFile(t, path, 4<<20, old)
			srv, addr := exporttest.Start(t, config(path), tr.URL)
			c1 := exporttest.Connect(t, addr, "disk")
			srv.Hold(true)
			defer srv.Hold(false)
			reqs, payloads := slowBatch()
			for i, r := range reqs {
				if err := c1.Send(r, payloads[i]); err != nil {
					t.Fatal(err)
				}
			}
			noReplies(t, c1, 1<<63) // all dispatched, none answered
			if n := srv.Executing(); n != int64(len(reqs)) {
				t.Fatalf("%d ops executing, want %d", n, len(reqs))
			}
			c1.Close()
			waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })
			c2 := exporttest.Resume(t, addr, "disk", c1.Welcome.Session)
			for i, r := range reqs {
				if err := c2.Send(r, payloads[i]); err != nil {
					t.Fatal(err)
				}
			}
			noReplies(t, c2, 1<<63)
			if n := srv.Executing(); n != int64(len(reqs)) {
				t.Fatalf("%d ops executing after the resends, want %d", n, len(reqs))
			}
			srv.Hold(false)
			got := recvBatch(t, c2, len(reqs))
			checkBatch(t, path, got, old)
			noReplies(t, c2, 1<<63+1) // once each
			waitFor(t, 5*time.Second, "the old connection to end", func() bool { return srv.NumConns() == 1 })
		})
	}
}

// TestResumeSlowDisk: the same with a real delay on every op (the sync
// helpers' path), so that completions race the resume and the resends:
// whatever the order, every id is answered on the new connection with
// the right status and data, and the file is right.
func TestResumeSlowDisk(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) {
			path := exporttest.File(t, testSize)
			old := pattern(256<<10, 40)
			writeFile(t, path, 4<<20, old)
			cfg := config(path)
			export.IODelay(&cfg, 150*time.Millisecond)
			srv, addr := exporttest.Start(t, cfg, tr.URL)
			c1 := exporttest.Connect(t, addr, "disk")
			reqs, payloads := slowBatch()
			for i, r := range reqs {
				if err := c1.Send(r, payloads[i]); err != nil {
					t.Fatal(err)
				}
			}
			c1.Close()
			c2 := exporttest.Resume(t, addr, "disk", c1.Welcome.Session)
			if !c2.Welcome.Resumed {
				t.Fatal("not resumed")
			}
			for i, r := range reqs {
				if err := c2.Send(r, payloads[i]); err != nil {
					t.Fatal(err)
				}
			}
			// A completion may arrive before its resend is answered from
			// the record: at least one reply per id.
			got := map[uint64][]byte{}
			for len(got) < len(reqs) {
				r, p, err := c2.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if r.Status != wire.StatusOK {
					t.Fatalf("%v id %d: %v", r.Op, r.ID, r.Status)
				}
				got[r.ID] = p
			}
			checkBatch(t, path, got, old)
			waitFor(t, 5*time.Second, "the I/O to finish", func() bool { return srv.Executing() == 0 })
		})
	}
}

// slowBatch: writes of 4 KiB and 128 KiB (ids 1-4) and reads of data
// written before (ids 5-6).
func slowBatch() ([]wire.Request, [][]byte) {
	var reqs []wire.Request
	var payloads [][]byte
	for i, n := range []int{bs, 128 << 10, bs, 128 << 10} {
		p := pattern(n, uint64(100+i))
		reqs = append(reqs, write(uint64(i+1), uint64(i)<<20, p))
		payloads = append(payloads, p)
	}
	reqs = append(reqs, read(5, 4<<20, 128<<10), read(6, 4<<20+128<<10, 128<<10))
	payloads = append(payloads, nil, nil)
	return reqs, payloads
}

func recvBatch(t *testing.T, c *exporttest.Client, n int) map[uint64][]byte {
	t.Helper()
	got := map[uint64][]byte{}
	for range n {
		r, p, err := c.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != wire.StatusOK {
			t.Fatalf("%v id %d: %v", r.Op, r.ID, r.Status)
		}
		if _, dup := got[r.ID]; dup {
			t.Fatalf("two replies for id %d", r.ID)
		}
		got[r.ID] = p
	}
	return got
}

func checkBatch(t *testing.T, path string, got map[uint64][]byte, old []byte) {
	t.Helper()
	reqs, payloads := slowBatch()
	for i, r := range reqs {
		p, ok := got[r.ID]
		if !ok {
			t.Fatalf("no reply for id %d", r.ID)
		}
		if r.Op == wire.OpWrite {
			if !bytes.Equal(fileAt(t, path, int64(r.Offset), len(payloads[i])), payloads[i]) {
				t.Fatalf("write id %d not in the file", r.ID)
			}
			continue
		}
		at := int(r.Offset - 4<<20)
		if !bytes.Equal(p, old[at:at+int(r.Length)]) {
			t.Fatalf("read id %d returned other data", r.ID)
		}
	}
}

func writeFile(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownWithIOInFlight: Shutdown while slow writes (large ones too)
// are in flight on a connection of every transport, and more wait unread
// (a small MaxBufferBytes): every dispatched write completes and is
// answered before GOODBYE, nothing unanswered is applied, and Shutdown
// returns once all is on disk.
func TestShutdownWithIOInFlight(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	export.IODelay(&cfg, 20*time.Millisecond)
	cfg.MaxBufferBytes = 512 << 10 // most writes wait unread at Shutdown
	srv, err := export.New(withTestLog(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	type client struct {
		c    *exporttest.Client
		base uint64
	}
	var clients []client
	served := make(chan error, 4)
	for i, tr := range exporttest.Transports(t) {
		addr := serveOn(t, srv, tr.URL, served)
		clients = append(clients, client{exporttest.Connect(t, addr, "disk"), uint64(i) << 22})
	}
	const n = 24
	size := func(id uint64) int { return bs << (id % 6) } // 4 KiB .. 128 KiB
	for _, cl := range clients {
		go func() {
			for id := uint64(1); id <= n; id++ {
				data := pattern(size(id), cl.base+id)
				if cl.c.Send(write(id, cl.base+id*(128<<10), data), data) != nil {
					return
				}
			}
		}()
	}
	answered := make([]map[uint64]bool, len(clients))
	for i, cl := range clients {
		r, _, err := cl.c.Recv()
		if err != nil || r.Op != wire.OpWrite || r.Status != 0 {
			t.Fatalf("first reply %+v, %v", r, err)
		}
		answered[i] = map[uint64]bool{r.ID: true}
	}
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	for i, cl := range clients {
		for {
			r, _, err := cl.c.Recv()
			if err != nil {
				t.Fatalf("before GOODBYE: %v", err)
			}
			if r.Op == wire.OpGoodbye {
				break
			}
			if r.Status != 0 {
				t.Fatalf("reply %+v", r)
			}
			answered[i][r.ID] = true
		}
		cl.c.ExpectClosed(5 * time.Second)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, cl := range clients {
		for id := uint64(1); id <= n; id++ {
			data := pattern(size(id), cl.base+id)
			on := bytes.Equal(fileAt(t, path, int64(cl.base+id*(128<<10)), len(data)), data)
			if on != answered[i][id] {
				t.Fatalf("client %d write %d: on disk %v, answered %v", i, id, on, answered[i][id])
			}
		}
		t.Logf("client %d: %d of %d writes answered before GOODBYE", i, len(answered[i]), n)
	}
	for range clients {
		if err := <-served; !errors.Is(err, export.ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
	}
}

func withTestLog(t *testing.T, cfg export.Config) export.Config {
	if cfg.Log == nil {
		cfg.Log = exporttest.TestLogger(t)
	}
	return cfg
}

// serveOn serves srv on a new listener of url and returns the address to
// dial; Serve's result goes to served.
func serveOn(t *testing.T, srv *export.Server, url string, served chan<- error) string {
	l, u, err := transport.Listen(context.Background(), url, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	go func() { served <- srv.Serve(context.Background(), l) }()
	return u.String()
}

// TestDribble: requests arrive in random pieces, headers and payloads
// split anywhere, small and large (received directly) writes mixed with
// pings, then reads: everything is answered and the data is right.
func TestDribble(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		t.Run(tr.Name, func(t *testing.T) {
			path := exporttest.File(t, testSize)
			_, addr := exporttest.Start(t, config(path), tr.URL)
			c := exporttest.Connect(t, addr, "disk")
			rng := rand.New(rand.NewPCG(3, 4))
			datas := make([][]byte, 12)
			for slot := range datas {
				datas[slot] = pattern(bs<<rng.IntN(9), uint64(slot)) // 4 KiB .. 1 MiB
			}
			id := uint64(0)
			for _, phase := range []wire.Op{wire.OpWrite, wire.OpRead} {
				var stream []byte
				want := map[uint64][]byte{}
				for slot, data := range datas {
					id++
					if phase == wire.OpWrite {
						stream = append(stream, reqBytes(write(id, uint64(slot)<<20, data), data)...)
					} else {
						stream = append(stream, reqBytes(read(id, uint64(slot)<<20, len(data)), nil)...)
					}
					want[id] = data
					stream = append(stream, reqBytes(wire.Request{Op: wire.OpPing, ID: 1<<63 + id}, nil)...)
					want[1<<63+id] = nil
				}
				errc := make(chan error, 1)
				go func() {
					rng := rand.New(rand.NewPCG(id, 5))
					for len(stream) > 0 {
						k := min(len(stream), 1+rng.IntN(3*bs))
						if rng.IntN(4) == 0 {
							k = min(len(stream), 1+rng.IntN(40))
						}
						if err := c.SendRaw(stream[:k]); err != nil {
							errc <- err
							return
						}
						stream = stream[k:]
						if rng.IntN(8) == 0 {
							time.Sleep(time.Millisecond)
						}
					}
					errc <- nil
				}()
				for len(want) > 0 {
					r, p, err := c.Recv()
					if err != nil {
						t.Fatal(err)
					}
					w, ok := want[r.ID]
					if !ok || r.Status != 0 || (r.Op == wire.OpPing) != (r.ID >= 1<<63) {
						t.Fatalf("unexpected reply %+v", r)
					}
					if r.Op == wire.OpRead && !bytes.Equal(p, w) {
						t.Fatalf("read id %d: other data", r.ID)
					}
					delete(want, r.ID)
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestPingFlood: a client that sends pings without reading the replies is
// not read any further once 64 replies wait (backpressure, not an error or
// unbounded memory); it gets every reply once it reads.
func TestPingFlood(t *testing.T) {
	path := exporttest.File(t, testSize)
	_, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	const n = 50000
	go func() {
		var b []byte
		for i := range uint64(n) {
			b = append(b, reqBytes(wire.Request{Op: wire.OpPing, ID: i}, nil)...)
		}
		_ = c.SendRaw(b)
	}()
	time.Sleep(100 * time.Millisecond)
	for i := range uint64(n) {
		r, _, err := c.Recv()
		if err != nil || r.Op != wire.OpPing || r.ID != i {
			t.Fatalf("ping %d: %+v, %v", i, r, err)
		}
	}
}

// TestMemoryFile: an export on tmpfs is served by inline copies through a
// mapping; reads of holes use pread and do not allocate them; discard and
// write-zeroes forget the copied pages.
func TestMemoryFile(t *testing.T) {
	var sfs unix.Statfs_t
	if unix.Statfs("/dev/shm", &sfs) != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "dst-export-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "mem.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, testSize); err != nil { // sparse
		t.Fatal(err)
	}
	srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	inline, mapped := srv.MemoryFile("disk")
	if !inline {
		t.Skip("this kernel completes tmpfs I/O without io-wq: no inline path")
	}
	if !mapped {
		t.Fatal("tmpfs export not mapped")
	}
	blocks := func() int64 {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks
	}
	c := exporttest.Connect(t, addr, "disk")
	before := blocks()
	if got := c.MustDo(read(1, 8<<20, 1<<20), nil, wire.StatusOK); !isZero(got) {
		t.Fatal("a hole does not read as zeroes")
	}
	if after := blocks(); after != before {
		t.Fatalf("reading a hole allocated it: %d blocks, then %d", before, after)
	}
	id := uint64(1)
	next := func() uint64 { id++; return id }
	roundTrip(t, c, path, next)
	const off, n = 2 << 20, 256 << 10
	data := pattern(n, 77)
	c.MustDo(write(next(), off, data), data, wire.StatusOK)
	c.MustDo(wire.Request{Op: wire.OpDiscard, ID: next(), Offset: off, Length: n / 2}, nil, wire.StatusOK)
	c.MustDo(wire.Request{Op: wire.OpWriteZeroes, ID: next(), Offset: off + n/2, Length: n / 4}, nil, wire.StatusOK)
	got := c.MustDo(read(next(), off, n), nil, wire.StatusOK)
	if !isZero(got[:3*n/4]) || !bytes.Equal(got[3*n/4:], data[3*n/4:]) {
		t.Fatal("discard and write-zeroes: wrong data read back")
	}
	fua := write(next(), off, data)
	fua.Flags = wire.FlagFUA
	c.MustDo(fua, data, wire.StatusOK)
	c.MustDo(wire.Request{Op: wire.OpFlush, ID: next()}, nil, wire.StatusOK)
	if !bytes.Equal(c.MustDo(read(next(), off, n), nil, wire.StatusOK), data) {
		t.Fatal("FUA write not read back")
	}
}
