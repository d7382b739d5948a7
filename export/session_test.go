package export_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/fault"
)

// noReplies pings and fails if any reply comes before the ping's.
func noReplies(t *testing.T, c *exporttest.Client, id uint64) {
	t.Helper()
	before, err := c.Ping(id)
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	if len(before) != 0 {
		t.Fatalf("unexpected replies: %+v", before)
	}
}

func recvOK(t *testing.T, c *exporttest.Client, op wire.Op, id uint64) []byte {
	t.Helper()
	r, p, err := c.Recv()
	if err != nil {
		t.Fatalf("waiting for %v id %d: %v", op, id, err)
	}
	if r.Op != op || r.ID != id || r.Status != wire.StatusOK {
		t.Fatalf("got %v id %d status %v, want %v id %d OK", r.Op, r.ID, r.Status, op, id)
	}
	return p
}

const blockX = 1 << 20

// TestResumeNeverAppliesTwice: writes A then B to block X (ids 5, 6),
// both acknowledged; the connection is lost (closed by the client, or cut
// by transport/fault); a new connection resumes the session and resends
// id 5 with A: it is answered from the record and X still holds B.
func TestResumeNeverAppliesTwice(t *testing.T) {
	for _, how := range []string{"close", "fault cut"} {
		t.Run(how, func(t *testing.T) {
			path := exporttest.File(t, testSize)
			srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
			a, b, cdata := pattern(bs, 1), pattern(bs, 2), pattern(bs, 3)
			hello := &wire.Hello{Export: "disk", Features: exporttest.AllFeatures}
			var c1 *exporttest.Client
			if how == "close" {
				c1 = exporttest.Dial(t, addr)
			} else {
				// Cut after the HELLO and the two writes: the third
				// request never reaches the exporter.
				helloLen := len(helloBytes(t, hello, nil))
				cut := helloLen + 2*(wire.RequestHeaderSize+bs) + 1
				fc, err := fault.Dial(context.Background(), addr, transport.Options{},
					fault.Config{Name: "c1", Write: fault.Rules{Cut: true, CutAfter: int64(cut)}}, rand.New(rand.NewPCG(1, 1)))
				if err != nil {
					t.Fatal(err)
				}
				c1 = exporttest.NewClient(t, fc)
			}
			if _, err := c1.Hello(hello); err != nil {
				t.Fatal(err)
			}
			token := c1.Welcome.Session
			c1.MustDo(write(5, blockX, a), a, wire.StatusOK)
			c1.MustDo(write(6, blockX, b), b, wire.StatusOK)
			if how == "close" {
				c1.Close()
			} else {
				_ = c1.Send(write(7, 2*blockX, cdata), cdata) // cut
				c1.ExpectClosed(5 * time.Second)
			}
			waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })

			c2 := exporttest.Resume(t, addr, "disk", token)
			if !c2.Welcome.Resumed || c2.Welcome.Session != token {
				t.Fatalf("welcome: resumed %v, session %v", c2.Welcome.Resumed, c2.Welcome.Session)
			}
			// The client resends everything unanswered in id order; a
			// confused one resends answered ids too.
			c2.MustDo(write(5, blockX, a), a, wire.StatusOK)
			if got := fileAt(t, path, blockX, bs); !bytes.Equal(got, b) {
				t.Fatalf("block X does not hold B: write id 5 was applied again")
			}
			c2.MustDo(write(6, blockX, b), b, wire.StatusOK)
			c2.MustDo(write(7, 2*blockX, cdata), cdata, wire.StatusOK)
			if !bytes.Equal(fileAt(t, path, 2*blockX, bs), cdata) {
				t.Fatal("id 7, never received before, was not executed")
			}
			if got := c2.MustDo(read(8, blockX, bs), nil, wire.StatusOK); !bytes.Equal(got, b) {
				t.Fatal("read of X is not B")
			}
		})
	}
}

// TestExecutingDuplicate: a copy of a transaction that is still executing
// is not executed again, and gets one reply, when the first copy
// completes: on the same connection, and on a resumed one.
func TestExecutingDuplicate(t *testing.T) {
	path := exporttest.File(t, testSize)
	a := pattern(bs, 4)

	t.Run("same connection", func(t *testing.T) {
		srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
		c := exporttest.Connect(t, addr, "disk")
		srv.Hold(true)
		for range 3 {
			if err := c.Send(write(1, blockX, a), a); err != nil {
				t.Fatal(err)
			}
		}
		noReplies(t, c, 1<<63)
		if n := srv.Executing(); n != 1 {
			t.Fatalf("%d ops executing for three copies of one id", n)
		}
		srv.Hold(false)
		recvOK(t, c, wire.OpWrite, 1)
		noReplies(t, c, 1<<63+1)
	})

	t.Run("resumed connection", func(t *testing.T) {
		srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
		c1 := exporttest.Connect(t, addr, "disk")
		token := c1.Welcome.Session
		srv.Hold(true)
		if err := c1.Send(write(1, blockX, a), a); err != nil {
			t.Fatal(err)
		}
		noReplies(t, c1, 1<<63) // id 1 is dispatched
		c1.Close()
		waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })
		c2 := exporttest.Resume(t, addr, "disk", token)
		if err := c2.Send(write(1, blockX, a), a); err != nil {
			t.Fatal(err)
		}
		noReplies(t, c2, 1<<63)
		if n := srv.Executing(); n != 1 {
			t.Fatalf("%d ops executing for two copies of one id", n)
		}
		srv.Hold(false)
		recvOK(t, c2, wire.OpWrite, 1) // on the current connection
		noReplies(t, c2, 1<<63+1)
	})

	t.Run("completed while detached", func(t *testing.T) {
		srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
		c1 := exporttest.Connect(t, addr, "disk")
		token := c1.Welcome.Session
		srv.Hold(true)
		if err := c1.Send(write(1, blockX, a), a); err != nil {
			t.Fatal(err)
		}
		noReplies(t, c1, 1<<63)
		c1.Close()
		waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })
		srv.Hold(false)
		waitFor(t, 5*time.Second, "the write to complete", func() bool { return srv.Executing() == 0 })
		// The result stayed in the record (rule 5).
		c2 := exporttest.Resume(t, addr, "disk", token)
		b := pattern(bs, 5)
		c2.MustDo(write(2, blockX, b), b, wire.StatusOK)
		c2.MustDo(write(1, blockX, a), a, wire.StatusOK)
		if !bytes.Equal(fileAt(t, path, blockX, bs), b) {
			t.Fatal("id 1 was executed again")
		}
	})
}

// TestRecordRules: reads are executed again, the floor and eviction give
// ESTALE, an id reused for another op is refused, and a new id that would
// evict an executing one closes the connection.
func TestRecordRules(t *testing.T) {
	path := exporttest.File(t, testSize)
	srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	a, b := pattern(bs, 6), pattern(bs, 7)

	t.Run("read executed again", func(t *testing.T) {
		c := exporttest.Connect(t, addr, "disk")
		c.MustDo(write(1, blockX, a), a, wire.StatusOK)
		if got := c.MustDo(read(2, blockX, bs), nil, wire.StatusOK); !bytes.Equal(got, a) {
			t.Fatal("read 2")
		}
		c.MustDo(write(3, blockX, b), b, wire.StatusOK)
		if got := c.MustDo(read(2, blockX, bs), nil, wire.StatusOK); !bytes.Equal(got, b) {
			t.Fatal("a done READ resent was not executed again")
		}
	})

	t.Run("floor", func(t *testing.T) {
		c := exporttest.Connect(t, addr, "disk")
		for id := uint64(1); id <= 3; id++ {
			c.MustDo(write(id, blockX, a), a, wire.StatusOK)
		}
		r := write(4, blockX, b)
		r.Floor = 4
		c.MustDo(r, b, wire.StatusOK)
		c.MustDo(write(2, blockX, a), a, wire.StatusESTALE)
		c.MustDo(read(3, blockX, bs), nil, wire.StatusESTALE)
		if !bytes.Equal(fileAt(t, path, blockX, bs), b) {
			t.Fatal("an id below the floor was executed")
		}
		c.MustDo(read(5, blockX, bs), nil, wire.StatusOK)
	})

	t.Run("evicted", func(t *testing.T) {
		c := exporttest.Connect(t, addr, "disk")
		c.MustDo(write(10, blockX, a), a, wire.StatusOK)
		c.MustDo(write(10+1<<16, blockX, b), b, wire.StatusOK) // same entry
		c.MustDo(write(10, blockX, a), a, wire.StatusESTALE)
		if !bytes.Equal(fileAt(t, path, blockX, bs), b) {
			t.Fatal("an evicted id was executed")
		}
	})

	t.Run("id reused for another op", func(t *testing.T) {
		c := exporttest.Connect(t, addr, "disk")
		c.MustDo(write(1, blockX, a), a, wire.StatusOK)
		c.MustDo(wire.Request{Op: wire.OpFlush, ID: 1}, nil, wire.StatusEINVAL)
		c.MustDo(write(1, blockX, a), a, wire.StatusOK) // the record is intact
	})

	t.Run("collision with an executing id", func(t *testing.T) {
		c := exporttest.Connect(t, addr, "disk")
		srv.Hold(true)
		defer srv.Hold(false)
		if err := c.Send(read(20, 0, bs), nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Send(read(20+1<<16, 0, bs), nil); err != nil {
			t.Fatal(err)
		}
		c.ExpectClosed(5 * time.Second)
	})

	t.Run("refused request recorded", func(t *testing.T) {
		// A request refused by the checks is done with its status:
		// resent, it gets the same answer.
		c := exporttest.Connect(t, addr, "disk")
		c.MustDo(write(1, testSize, a), a, wire.StatusENOSPC)
		c.MustDo(write(1, testSize, a), a, wire.StatusENOSPC)
	})

	t.Run("id 0", func(t *testing.T) {
		c := exporttest.Connect(t, addr, "disk")
		c.MustDo(write(0, blockX, a), a, wire.StatusEINVAL)
		c.MustDo(read(0, blockX, bs), nil, wire.StatusEINVAL)
		c.MustDo(wire.Request{Op: wire.OpPing, ID: 0}, nil, wire.StatusOK) // not a transaction
	})
}

// gateListener wraps the first accepted conn in a gateConn.
type gateListener struct {
	net.Listener
	pass, hold int
	release    chan struct{}
	held       chan struct{}
	once       sync.Once
}

func (l *gateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	first := false
	l.once.Do(func() { first = true })
	if !first {
		return c, nil
	}
	return &gateConn{Conn: c, l: l}, nil
}

func (l *gateListener) SetDeadline(t time.Time) error {
	return l.Listener.(interface{ SetDeadline(time.Time) error }).SetDeadline(t)
}

// gateConn passes the first pass bytes, then reads the next hold bytes
// from the socket into its own buffer — as if the exporter had them
// buffered — and returns them only once release is closed, even if the
// conn was closed meanwhile.
type gateConn struct {
	net.Conn
	l      *gateListener
	passed int
	held   []byte
	gotten bool
}

func (g *gateConn) Read(p []byte) (int, error) {
	if g.passed < g.l.pass {
		n, err := g.Conn.Read(p[:min(len(p), g.l.pass-g.passed)])
		g.passed += n
		return n, err
	}
	if !g.gotten {
		g.gotten = true
		g.held = make([]byte, g.l.hold)
		if _, err := io.ReadFull(g.Conn, g.held); err != nil {
			return 0, err
		}
		close(g.l.held)
		<-g.l.release
	}
	if len(g.held) > 0 {
		n := copy(p, g.held)
		g.held = g.held[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

// TestFencing: a request that the old connection still holds when the
// session is resumed elsewhere is never executed, even when the old
// reader gets to it after the resume (§5.4, §5.5).
func TestFencing(t *testing.T) {
	path := exporttest.File(t, testSize)
	hello := &wire.Hello{Export: "disk", Features: exporttest.AllFeatures}
	l, u, err := transport.Listen(context.Background(), exporttest.TCP4, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	gl := &gateListener{Listener: l, pass: len(helloBytes(t, hello, nil)), hold: wire.RequestHeaderSize + bs,
		release: make(chan struct{}), held: make(chan struct{})}
	released := false
	defer func() {
		if !released {
			close(gl.release)
		}
	}()
	srv := exporttest.StartListener(t, config(path), gl)
	addr := u.String()

	a, b := pattern(bs, 8), pattern(bs, 9)
	c1 := exporttest.Dial(t, addr)
	if _, err := c1.Hello(hello); err != nil {
		t.Fatal(err)
	}
	if err := c1.Send(write(1, blockX, a), a); err != nil {
		t.Fatal(err)
	}
	<-gl.held // the old connection's reader holds write id 1

	c2 := exporttest.Resume(t, addr, "disk", c1.Welcome.Session)
	c2.MustDo(write(2, blockX, b), b, wire.StatusOK)
	close(gl.release) // the old reader now sees write id 1
	released = true
	waitFor(t, 5*time.Second, "the old connection to end", func() bool { return srv.NumConns() == 1 })
	noReplies(t, c2, 1<<63)
	if !bytes.Equal(fileAt(t, path, blockX, bs), b) {
		t.Fatal("the fenced connection's write id 1 was executed after the resume")
	}
	// The client resends id 1 (it was never answered): it runs now, once.
	c2.MustDo(write(1, 2*blockX, a), a, wire.StatusOK)
}

// TestDisconnect: in-flight transactions finish and are answered, then
// DISCONNECT is echoed, the connection closes and the session is gone.
func TestDisconnect(t *testing.T) {
	path := exporttest.File(t, testSize)
	srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	srv.Hold(true)
	for id := uint64(1); id <= 4; id++ {
		data := pattern(bs, id)
		if err := c.Send(write(id, id*bs, data), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Send(wire.Request{Op: wire.OpDisconnect, ID: 99}, nil); err != nil {
		t.Fatal(err)
	}
	// Requests after DISCONNECT are not read.
	if err := c.Send(read(5, 0, bs), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	srv.Hold(false)
	got := map[uint64]bool{}
	for range 4 {
		r, _, err := c.Recv()
		if err != nil || r.Op != wire.OpWrite || r.Status != 0 {
			t.Fatalf("reply %+v, %v", r, err)
		}
		got[r.ID] = true
	}
	r, _, err := c.Recv()
	if err != nil || r.Op != wire.OpDisconnect || r.ID != 99 || r.Status != 0 {
		t.Fatalf("got %+v, %v, want the DISCONNECT echo", r, err)
	}
	c.ExpectClosed(5 * time.Second)
	for id := uint64(1); id <= 4; id++ {
		if !bytes.Equal(fileAt(t, path, int64(id*bs), bs), pattern(bs, id)) {
			t.Fatalf("write %d not applied", id)
		}
	}
	waitFor(t, 5*time.Second, "the session to be forgotten", func() bool { return srv.NumSessions() == 0 })
	c2 := exporttest.Resume(t, addr, "disk", c.Welcome.Session)
	if c2.Welcome.Resumed {
		t.Fatal("a disconnected session was resumed")
	}
}

// TestGoodbyeOnShutdown: Shutdown finishes what is in flight, sends the
// replies, then GOODBYE, then closes; every write answered is on disk.
func TestGoodbyeOnShutdown(t *testing.T) {
	path := exporttest.File(t, testSize)
	srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	srv.Hold(true)
	const n = 8
	for id := uint64(1); id <= n; id++ {
		data := pattern(64<<10, id)
		if err := c.Send(write(id, id<<20, data), data); err != nil {
			t.Fatal(err)
		}
	}
	noReplies(t, c, 1<<63) // all n dispatched, none answered
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned with writes in flight: %v", err)
	default:
	}
	srv.Hold(false)
	for range n {
		r, _, err := c.Recv()
		if err != nil || r.Op != wire.OpWrite || r.Status != 0 {
			t.Fatalf("reply %+v, %v", r, err)
		}
	}
	r, _, err := c.Recv()
	if err != nil || r.Op != wire.OpGoodbye || r.ID != 0 {
		t.Fatalf("got %+v, %v, want GOODBYE", r, err)
	}
	c.ExpectClosed(5 * time.Second)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for id := uint64(1); id <= n; id++ {
		if !bytes.Equal(fileAt(t, path, int64(id<<20), 64<<10), pattern(64<<10, id)) {
			t.Fatalf("write %d not on disk", id)
		}
	}
}

// TestShutdownUnansweredNotApplied: requests the exporter had not
// dispatched when Shutdown stopped reading are never applied; the ones
// answered are.
func TestShutdownUnansweredNotApplied(t *testing.T) {
	path := exporttest.File(t, testSize)
	srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	const n = 256
	go func() {
		for id := uint64(1); id <= n; id++ {
			data := pattern(bs, id)
			if c.Send(write(id, id*bs, data), data) != nil {
				return
			}
		}
	}()
	// The first reply: writes complete in any order.
	first, _, err := c.Recv()
	if err != nil || first.Op != wire.OpWrite || first.Status != 0 {
		t.Fatalf("first reply %+v, %v", first, err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	answered := map[uint64]bool{first.ID: true}
	for {
		r, _, err := c.Recv()
		if err != nil {
			t.Fatalf("before GOODBYE: %v", err)
		}
		if r.Op == wire.OpGoodbye {
			break
		}
		if r.Status != 0 {
			t.Fatalf("reply %+v", r)
		}
		answered[r.ID] = true
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= n; id++ {
		on := bytes.Equal(fileAt(t, path, int64(id*bs), bs), pattern(bs, id))
		if on != answered[id] {
			t.Fatalf("write %d: on disk %v, answered %v", id, on, answered[id])
		}
	}
	t.Logf("%d of %d writes answered before GOODBYE", len(answered), n)
}

// TestLinger: a detached session can be resumed within SessionLinger and
// is forgotten after it.
func TestLinger(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.SessionLinger = 300 * time.Millisecond
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)

	c := exporttest.Connect(t, addr, "disk")
	c.Close()
	waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })
	c2 := exporttest.Resume(t, addr, "disk", c.Welcome.Session)
	if !c2.Welcome.Resumed {
		t.Fatal("not resumed within the linger time")
	}
	c2.Close()
	start := time.Now()
	waitFor(t, 5*time.Second, "the session to expire", func() bool { return srv.NumSessions() == 0 })
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("session expired after %v, linger is 300ms", d)
	}
	c3 := exporttest.Resume(t, addr, "disk", c.Welcome.Session)
	if c3.Welcome.Resumed || c3.Welcome.Session == c.Welcome.Session {
		t.Fatal("an expired session was resumed")
	}
}

// TestResumeOtherExport: a token of another export starts a new session;
// so does a resume without the RESUME feature, whose sessions are
// forgotten at once.
func TestResumeOtherExport(t *testing.T) {
	path, path2 := exporttest.File(t, testSize), exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "disk2", Path: path2})
	log, logs := exporttest.ObservedLogger(t)
	cfg.Log = log
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk")
	c.Close()
	waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })
	c2 := exporttest.Resume(t, addr, "disk2", c.Welcome.Session)
	if c2.Welcome.Resumed {
		t.Fatal("a session of export disk was resumed on disk2")
	}
	exporttest.WaitLog(t, logs, "session token belongs to another export", time.Second)
	c3 := exporttest.Resume(t, addr, "disk", c.Welcome.Session)
	if !c3.Welcome.Resumed {
		t.Fatal("the session was lost")
	}

	n := srv.NumSessions()
	nr := exporttest.Dial(t, addr)
	if _, err := nr.Hello(&wire.Hello{Export: "disk", Features: wire.FeatFlush}); err != nil {
		t.Fatal(err)
	}
	nr.Close()
	waitFor(t, 5*time.Second, "the session without RESUME to be forgotten", func() bool { return srv.NumSessions() == n })
}

// TestSessionCap: beyond the cap, a new session forgets the detached
// session that waited longest; attached sessions are never forgotten.
func TestSessionCap(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	export.MaxSessions(&cfg, 3)
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	var tokens []wire.Token
	for i := range 3 {
		c := exporttest.Connect(t, addr, "disk")
		tokens = append(tokens, c.Welcome.Session)
		c.Close()
		waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == i+1 })
	}
	live := exporttest.Connect(t, addr, "disk") // forgets tokens[0]
	if srv.NumSessions() != 3 {
		t.Fatalf("%d sessions, want 3", srv.NumSessions())
	}
	if c := exporttest.Resume(t, addr, "disk", tokens[0]); c.Welcome.Resumed {
		t.Fatal("the oldest detached session was kept")
	} else {
		c.Close()
	}
	if c := exporttest.Resume(t, addr, "disk", tokens[2]); !c.Welcome.Resumed {
		t.Fatal("the newest detached session was forgotten")
	}
	live.MustDo(read(1, 0, bs), nil, wire.StatusOK)
}
