package export_test

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
)

// stuckOld sets up the situation of a client daemon that crashed while
// the exporter still executes one of its writes: write id 1 (data a, to
// block X) is recorded executing on c1 but does not start, because c1's
// loop is stopped in the BeforeDispatch hook (on request id 2) — as if
// the disk took its time. Calling release lets c1's loop go on: it finds
// itself fenced, and write 1 runs then.
type stuckOld struct {
	srv     *export.Server
	addr    string
	path    string
	token   wire.Token
	release func()
}

func newStuckOld(t *testing.T, a []byte) *stuckOld {
	t.Helper()
	path := exporttest.File(t, testSize)
	c := config(path)
	blocked, released := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(released) }) }
	var first sync.Once
	export.BeforeDispatch(&c, func(id uint64) {
		if id != 2 {
			return
		}
		hit := false
		first.Do(func() { hit = true })
		if hit {
			close(blocked)
			<-released
		}
	})
	srv, addr := exporttest.Start(t, c, exporttest.TCP4)
	t.Cleanup(release) // runs before the server's cleanup, which waits for c1's loop
	c1 := exporttest.Connect(t, addr, "disk")
	srv.Hold(true)
	if err := c1.Send(write(1, blockX, a), a); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c1, 1<<63) // write 1 is dispatched: recorded executing, parked by the hold
	if err := c1.Send(read(2, 0, bs), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("c1's loop did not reach request 2")
	}
	srv.Hold(false) // c1's loop is stopped: write 1 stays executing, not started
	if n := srv.Executing(); n != 1 {
		t.Fatalf("%d ops executing, want 1", n)
	}
	return &stuckOld{srv: srv, addr: addr, path: path, token: c1.Welcome.Session, release: release}
}

// expectReplies reads n replies and checks their ids, in order, and that
// each is OK.
func expectReplies(t *testing.T, c *exporttest.Client, ids ...uint64) {
	t.Helper()
	for _, id := range ids {
		r, _, err := c.Recv()
		if err != nil {
			t.Fatalf("waiting for the reply to id %d: %v", id, err)
		}
		if r.ID != id || r.Status != wire.StatusOK {
			t.Fatalf("got %v id %d status %v, want id %d OK", r.Op, r.ID, r.Status, id)
		}
	}
}

// TestResumeBarrier (PROTOCOL.md §5.4 step 3): after a resume, the new
// connection executes nothing until every transaction the session was
// executing at the resume has completed. Write 1 (A to block X) is still
// executing when the session is resumed; the new connection writes B to
// X (id 3, as a recovered client reissues it under a new id). B must not
// run before A has completed, or A would land over B.
func TestResumeBarrier(t *testing.T) {
	a, b := pattern(bs, 21), pattern(bs, 22)
	st := newStuckOld(t, a)
	c2 := exporttest.Resume(t, st.addr, "disk", st.token)
	if !c2.Welcome.Resumed {
		t.Fatal("not resumed")
	}
	if err := c2.Send(write(3, blockX, b), b); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c2, 1<<63) // PINGs are answered while the barrier holds
	time.Sleep(100 * time.Millisecond)
	if bytes.Equal(fileAt(t, st.path, blockX, bs), b) {
		t.Fatal("write 3 of the resumed connection ran while write 1 of the old one was still executing")
	}
	if n := st.srv.Executing(); n != 1 {
		t.Fatalf("%d ops executing behind the barrier, want 1 (the old write)", n)
	}
	st.release()
	// Write 1's reply comes on the current connection (§5.3 rule 5),
	// and only then does write 3 run.
	expectReplies(t, c2, 1, 3)
	if !bytes.Equal(fileAt(t, st.path, blockX, bs), b) {
		t.Fatal("block X does not hold B: the old write landed after the new one")
	}
	// A resend of id 1 is answered from the record, not executed.
	c2.MustDo(write(1, blockX, a), a, wire.StatusOK)
	if !bytes.Equal(fileAt(t, st.path, blockX, bs), b) {
		t.Fatal("write 1 was executed again")
	}
	// The barrier is gone: requests run at once.
	c2.MustDo(write(4, 2*blockX, a), a, wire.StatusOK)
	noReplies(t, c2, 1<<63+1)
}

// TestResumeBarrierResend: a resend of the executing id on the resumed
// connection is not held back and gets exactly one reply (§5.3 rule 1),
// and the barrier releases the requests parked behind it in arrival
// order.
func TestResumeBarrierResend(t *testing.T) {
	a, b, d := pattern(bs, 23), pattern(bs, 24), pattern(bs, 25)
	st := newStuckOld(t, a)
	c2 := exporttest.Resume(t, st.addr, "disk", st.token)
	for _, r := range []struct {
		id   uint64
		data []byte
	}{{1, a}, {3, b}, {4, d}} {
		if err := c2.Send(write(r.id, blockX, r.data), r.data); err != nil {
			t.Fatal(err)
		}
	}
	noReplies(t, c2, 1<<63)
	st.release()
	// 1 completes first; 3 and 4 were parked in that order and run
	// after it (writes of one batch may complete in any order).
	expectReplies(t, c2, 1)
	got := map[uint64]bool{}
	for range 2 {
		r, _, err := c2.Recv()
		if err != nil || r.Status != wire.StatusOK || (r.ID != 3 && r.ID != 4) {
			t.Fatalf("reply %+v, %v", r, err)
		}
		got[r.ID] = true
	}
	if len(got) != 2 {
		t.Fatalf("replies %v, want 3 and 4", got)
	}
	noReplies(t, c2, 1<<63+1) // no second reply to id 1
	if x := fileAt(t, st.path, blockX, bs); !bytes.Equal(x, b) && !bytes.Equal(x, d) {
		t.Fatal("block X holds neither of the writes issued after the resume")
	}
}

// TestResumeBarrierTwice: the connection that resumed is itself replaced
// while the barrier holds. The requests it parked are dropped unanswered
// (never dispatched: the client resends them), and the third connection
// waits for the same old write.
func TestResumeBarrierTwice(t *testing.T) {
	a, b, d := pattern(bs, 26), pattern(bs, 27), pattern(bs, 28)
	st := newStuckOld(t, a)
	c2 := exporttest.Resume(t, st.addr, "disk", st.token)
	if err := c2.Send(write(3, blockX, b), b); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c2, 1<<63) // write 3 is parked
	c3 := exporttest.Resume(t, st.addr, "disk", st.token)
	if !c3.Welcome.Resumed {
		t.Fatal("not resumed")
	}
	c2.ExpectClosed(5 * time.Second)
	if err := c3.Send(write(4, blockX, d), d); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c3, 1<<63)
	if x := fileAt(t, st.path, blockX, bs); bytes.Equal(x, d) || bytes.Equal(x, b) {
		t.Fatal("a request of a resumed connection ran while the old write was executing")
	}
	st.release()
	expectReplies(t, c3, 1, 4)
	time.Sleep(50 * time.Millisecond)
	if !bytes.Equal(fileAt(t, st.path, blockX, bs), d) {
		t.Fatal("block X does not hold D: write 3, parked on the replaced connection, ran")
	}
	// Write 3 was never dispatched, so it is not in the record: the
	// resend runs now.
	c3.MustDo(write(3, blockX, b), b, wire.StatusOK)
	if !bytes.Equal(fileAt(t, st.path, blockX, bs), b) {
		t.Fatal("the resend of write 3 did not run")
	}
}

// TestExecutingSessionKept: a detached session that still has a
// transaction executing is neither expired after SessionLinger nor
// forgotten to make room for a new session (the session cap): a client
// that resumes it must get the barrier, not a fresh session.
func TestExecutingSessionKept(t *testing.T) {
	a, b := pattern(bs, 29), pattern(bs, 30)
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.SessionLinger = 100 * time.Millisecond
	export.MaxSessions(&cfg, 1)
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	c1 := exporttest.Connect(t, addr, "disk")
	srv.Hold(true)
	defer srv.Hold(false)
	if err := c1.Send(write(1, blockX, a), a); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c1, 1<<63) // write 1 is recorded executing, parked by the hold
	c1.Close()
	waitFor(t, 5*time.Second, "the session to detach", func() bool { return srv.Detached() == 1 })
	time.Sleep(400 * time.Millisecond) // four linger times
	if n := srv.NumSessions(); n != 1 {
		t.Fatalf("%d sessions: the session with a write executing expired", n)
	}
	other := exporttest.Connect(t, addr, "disk") // over the cap of 1
	if n := srv.NumSessions(); n != 2 {
		t.Fatalf("%d sessions, want 2: the session with a write executing was forgotten for room", n)
	}
	c2 := exporttest.Resume(t, addr, "disk", c1.Welcome.Session)
	if !c2.Welcome.Resumed {
		t.Fatal("the session with a write executing was not resumed")
	}
	if err := c2.Send(write(3, blockX, b), b); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c2, 1<<63) // write 3 waits behind the barrier
	srv.Hold(false)
	expectReplies(t, c2, 1, 3)
	if !bytes.Equal(fileAt(t, path, blockX, bs), b) {
		t.Fatal("block X does not hold B")
	}
	// Once nothing executes, a detached session expires as usual.
	c2.Close()
	waitFor(t, 5*time.Second, "the idle detached session to expire", func() bool { return srv.NumSessions() == 1 })
	other.MustDo(read(1, 0, bs), nil, wire.StatusOK)
}
