package txn

import (
	"math/rand/v2"
	"syscall"
	"testing"

	"github.com/dst-dev/dst/internal/wire"
)

func cfg() Config {
	return Config{Capacity: 16, Timeout: 10, Retries: 2, Ping: 5, BackoffMin: 1, BackoffMax: 8}
}

// up brings a fresh engine to Up with the given in-flight limit.
func up(t *testing.T, c Config, maxInflight int) *Engine {
	t.Helper()
	e := New(c)
	rd := e.Ready()
	if !rd.Dial {
		t.Fatal("a new engine does not ask to dial")
	}
	e.Advance()
	if e.State() != Dialing {
		t.Fatalf("state %v after Dial", e.State())
	}
	e.ConnUp(maxInflight)
	return e
}

// sendAll runs Ready/Advance and returns the ids handed out for sending.
func sendAll(e *Engine) []uint64 {
	var ids []uint64
	for e.HasReady() {
		rd := e.Ready()
		if len(rd.Send) == 0 && !rd.Ping && !rd.Disconnect {
			e.Advance()
			break
		}
		for _, x := range rd.Send {
			ids = append(ids, x.ID)
		}
		e.Advance()
	}
	return ids
}

func reply(e *Engine, id uint64, op wire.Op, st wire.Status) {
	e.Step(wire.Reply{Op: op, ID: id, Status: st})
}

func completions(e *Engine) map[Handle]syscall.Errno {
	m := map[Handle]syscall.Errno{}
	for _, c := range e.TakeCompletions(nil) {
		m[c.Handle] = c.Err
	}
	return m
}

func TestSubmitSendReply(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(7, wire.OpWrite, wire.FlagFUA, 4096, 512, make([]byte, 512))
	rd := e.Ready()
	if len(rd.Send) != 1 {
		t.Fatalf("send %d", len(rd.Send))
	}
	x := rd.Send[0]
	r, err := wire.ParseRequest(x.Header[:], 0)
	if err != nil || r.ID != x.ID || r.Op != wire.OpWrite || r.Flags != wire.FlagFUA || r.Offset != 4096 || r.Length != 512 || r.Floor != x.ID {
		t.Fatalf("header %+v %v", r, err)
	}
	e.Advance()
	reply(e, x.ID, wire.OpWrite, 0)
	if c := completions(e); len(c) != 1 || c[7] != 0 {
		t.Fatalf("completions %v", c)
	}
	if e.Inflight() != 0 || e.Floor() != x.ID+1 {
		t.Fatalf("inflight %d floor %d", e.Inflight(), e.Floor())
	}
	// A duplicate reply for a completed id is ignored.
	reply(e, x.ID, wire.OpWrite, 0)
	if c := completions(e); len(c) != 0 {
		t.Fatalf("duplicate reply completed %v", c)
	}
}

func TestErrorStatusAndESTALE(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	e.Submit(2, wire.OpWrite, 0, 0, 512, nil)
	ids := sendAll(e)
	reply(e, ids[0], wire.OpWrite, wire.Status(syscall.ENOSPC))
	reply(e, ids[1], wire.OpWrite, wire.Status(syscall.ESTALE))
	c := completions(e)
	if c[1] != syscall.ENOSPC || c[2] != syscall.EIO {
		t.Fatalf("completions %v, want ENOSPC and EIO (for ESTALE)", c)
	}
}

func TestPendingWhileDownSentInOrderOnConnect(t *testing.T) {
	e := New(cfg())
	for h := range Handle(5) {
		e.Submit(h, wire.OpRead, 0, uint64(h)*512, 512, make([]byte, 512))
	}
	rd := e.Ready()
	if !rd.Dial || len(rd.Send) != 0 {
		t.Fatalf("down engine: dial %v send %d", rd.Dial, len(rd.Send))
	}
	e.Advance()
	e.ConnUp(64)
	ids := sendAll(e)
	if len(ids) != 5 {
		t.Fatalf("sent %v", ids)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("not in id order: %v", ids)
		}
	}
}

func TestReconnectResendsEverythingUnanswered(t *testing.T) {
	e := up(t, cfg(), 64)
	for h := range Handle(6) {
		e.Submit(h, wire.OpWrite, 0, uint64(h)*512, 512, nil)
	}
	ids := sendAll(e)
	reply(e, ids[1], wire.OpWrite, 0)
	reply(e, ids[4], wire.OpWrite, 0)
	completions(e)
	e.ConnDown()
	if e.State() != Down {
		t.Fatal("not down")
	}
	// Backoff: the first retry is due after BackoffMin ticks.
	if e.HasReady() {
		t.Fatal("dials again without backoff")
	}
	e.Tick()
	if rd := e.Ready(); !rd.Dial {
		t.Fatal("no dial after backoff")
	}
	e.Advance()
	e.ConnUp(64)
	again := sendAll(e)
	want := []uint64{ids[0], ids[2], ids[3], ids[5]}
	if len(again) != len(want) {
		t.Fatalf("resent %v, want %v", again, want)
	}
	for i := range want {
		if again[i] != want[i] {
			t.Fatalf("resent %v, want %v (same ids, id order)", again, want)
		}
	}
	if e.Stats().Reconnects != 1 {
		t.Fatalf("reconnects %d", e.Stats().Reconnects)
	}
}

func TestBackoffDoublesAndResets(t *testing.T) {
	c := cfg()
	e := New(c)
	var gaps []uint64
	last := uint64(0)
	for range 5 {
		for !e.HasReady() {
			e.Tick()
		}
		rd := e.Ready()
		if !rd.Dial {
			t.Fatal("expected dial")
		}
		e.Advance()
		gaps = append(gaps, e.Now()-last)
		last = e.Now()
		e.DialFailed()
	}
	want := []uint64{0, 1, 2, 4, 8}
	for i := range want {
		if gaps[i] != want[i] {
			t.Fatalf("dial gaps %v, want %v", gaps, want)
		}
	}
	for !e.HasReady() {
		e.Tick()
	}
	e.Ready()
	e.Advance()
	e.ConnUp(8)
	e.ConnDown()
	e.Tick()
	if !e.HasReady() {
		t.Fatal("backoff not reset by a successful connection")
	}
}

// TestTimeoutRetriesThenEIO: a request without reply is resent with the
// same id after each timeout and fails after Timeout×(Retries+1) ticks.
func TestTimeoutRetriesThenEIO(t *testing.T) {
	c := cfg()
	c.Ping = 1000 // keep pings out of this test
	e := up(t, c, 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	first := sendAll(e)
	var resent []uint64
	failedAt := uint64(0)
	for tick := uint64(1); tick <= 100 && failedAt == 0; tick++ {
		e.Tick()
		resent = append(resent, sendAll(e)...)
		if c := completions(e); len(c) == 1 {
			if c[1] != syscall.EIO {
				t.Fatalf("failed with %v", c[1])
			}
			failedAt = tick
		}
	}
	if failedAt != c.Timeout*uint64(c.Retries+1) {
		t.Fatalf("failed at tick %d, want %d", failedAt, c.Timeout*uint64(c.Retries+1))
	}
	if len(resent) != c.Retries || resent[0] != first[0] || resent[1] != first[0] {
		t.Fatalf("resends %v of id %d, want %d resends of the same id", resent, first[0], c.Retries)
	}
}

func TestTimeoutWhileDisconnectedCounts(t *testing.T) {
	c := cfg()
	e := New(c)
	e.Submit(1, wire.OpRead, 0, 0, 512, make([]byte, 512))
	for tick := uint64(1); tick <= c.Timeout*uint64(c.Retries+1); tick++ {
		e.Tick()
		if e.HasReady() {
			e.Ready()
			e.Advance()
			e.DialFailed()
		}
	}
	if got := completions(e); got[1] != syscall.EIO {
		t.Fatalf("completions %v: want EIO after the bound while never connected", got)
	}
}

func TestRetriesZeroFailsAfterOneTimeout(t *testing.T) {
	c := cfg()
	c.Retries = 0
	c.Ping = 1000
	e := up(t, c, 64)
	e.Submit(1, wire.OpRead, 0, 0, 512, make([]byte, 512))
	sendAll(e)
	for range c.Timeout {
		e.Tick()
		if len(sendAll(e)) != 0 {
			t.Fatal("resent with Retries 0")
		}
	}
	if got := completions(e); got[1] != syscall.EIO {
		t.Fatalf("completions %v", got)
	}
}

func TestPingAndDeadLink(t *testing.T) {
	c := cfg()
	e := up(t, c, 64)
	for range c.Ping - 1 {
		e.Tick()
	}
	if e.HasReady() {
		t.Fatal("ping before the interval")
	}
	e.Tick()
	rd := e.Ready()
	if !rd.Ping || rd.PingID&PingBit == 0 {
		t.Fatalf("no ping after %d idle ticks: %+v", c.Ping, rd)
	}
	id := rd.PingID
	e.Advance()
	// Answered: link alive, no close.
	reply(e, id, wire.OpPing, 0)
	for range c.Ping - 1 {
		e.Tick()
	}
	if rd := e.Ready(); rd.CloseConn {
		t.Fatal("closed a live link")
	}
	e.Advance()
	// Next ping unanswered: dead within two intervals of silence.
	for i := uint64(0); i < 2*c.Ping; i++ {
		e.Tick()
		if e.HasReady() {
			rd := e.Ready()
			closeConn := rd.CloseConn
			e.Advance()
			if closeConn {
				if i < c.Ping {
					t.Fatalf("declared dead after %d ticks", i)
				}
				e.ConnDown()
				return
			}
		}
	}
	t.Fatal("silent link never declared dead")
}

func TestCompletionDeferredWhileSending(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	rd := e.Ready()
	id := rd.Send[0].ID
	// The reply overtakes our own bookkeeping (e.g. an earlier copy).
	reply(e, id, wire.OpWrite, 0)
	if c := completions(e); len(c) != 0 {
		t.Fatal("completed while its buffer was being sent")
	}
	e.Advance()
	if c := completions(e); c[1] != 0 || len(c) != 1 {
		t.Fatalf("not completed at Advance: %v", c)
	}
}

func TestReceivingBlocksTimeoutAndConnDownClears(t *testing.T) {
	c := cfg()
	c.Ping = 1000
	e := up(t, c, 64)
	buf := make([]byte, 512)
	e.Submit(1, wire.OpRead, 0, 0, 512, buf)
	id := sendAll(e)[0]
	if b := e.Receiving(id, 1024); b != nil {
		t.Fatal("accepted a payload of the wrong length")
	}
	if b := e.Receiving(id, 512); &b[0] != &buf[0] {
		t.Fatal("Receiving did not return the request's buffer")
	}
	if e.Receiving(id, 512) != nil {
		t.Fatal("two readers for one buffer")
	}
	for range 10 * c.Timeout {
		e.Tick()
		sendAll(e)
	}
	if got := completions(e); len(got) != 0 {
		t.Fatal("a transaction completed while its payload was being read")
	}
	e.ConnDown() // the reader died mid-payload
	for range c.Timeout {
		e.Tick()
	}
	if got := completions(e); got[1] != syscall.EIO {
		t.Fatalf("after ConnDown the stuck read should time out: %v", got)
	}
}

func TestReadReplyWithoutReceivingIsIgnored(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpRead, 0, 0, 512, make([]byte, 512))
	id := sendAll(e)[0]
	e.Step(wire.Reply{Op: wire.OpRead, ID: id, Length: 512})
	if c := completions(e); len(c) != 0 {
		t.Fatal("a READ completed without its payload")
	}
	// An error reply carries no payload and completes it.
	reply(e, id, wire.OpRead, wire.Status(syscall.EIO))
	if c := completions(e); c[1] != syscall.EIO {
		t.Fatalf("%v", c)
	}
}

func TestWrongOpClosesConnection(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	id := sendAll(e)[0]
	reply(e, id, wire.OpRead, 0)
	if rd := e.Ready(); !rd.CloseConn {
		t.Fatal("a reply with another op did not drop the connection")
	}
	e.Advance()
	if c := completions(e); len(c) != 0 {
		t.Fatal("completed by a bogus reply")
	}
}

func TestGoodbyeClosesConnection(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Step(wire.Reply{Op: wire.OpGoodbye})
	if rd := e.Ready(); !rd.CloseConn {
		t.Fatal("GOODBYE did not drop the connection")
	}
	e.Advance()
}

func TestMaxInflight(t *testing.T) {
	e := up(t, cfg(), 3)
	for h := range Handle(8) {
		e.Submit(h, wire.OpWrite, 0, 0, 512, nil)
	}
	ids := sendAll(e)
	if len(ids) != 3 {
		t.Fatalf("sent %d with a limit of 3", len(ids))
	}
	reply(e, ids[0], wire.OpWrite, 0)
	if more := sendAll(e); len(more) != 1 {
		t.Fatalf("sent %d after one reply", len(more))
	}
}

func TestFloorInHeaders(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	e.Submit(2, wire.OpWrite, 0, 0, 512, nil)
	ids := sendAll(e)
	reply(e, ids[1], wire.OpWrite, 0) // later one first: floor stays
	if e.Floor() != ids[0] {
		t.Fatalf("floor %d, want %d", e.Floor(), ids[0])
	}
	reply(e, ids[0], wire.OpWrite, 0)
	e.Submit(3, wire.OpWrite, 0, 0, 512, nil)
	rd := e.Ready()
	r, _ := wire.ParseRequest(rd.Send[0].Header[:], 0)
	if r.Floor != r.ID || r.Floor != ids[1]+1 {
		t.Fatalf("floor in header %d for id %d", r.Floor, r.ID)
	}
	e.Advance()
}

func TestTableSkipsBusySlots(t *testing.T) {
	tab := newTable(4)
	a := tab.alloc() // id 1, slot 1
	b := tab.alloc() // id 2
	tab.free(b)
	var ids []uint64
	for range 3 {
		ids = append(ids, tab.alloc().ID)
	}
	// ids 3, 4, then 5 would land on slot 1 (taken by id 1): skip to 6.
	if ids[0] != 3 || ids[1] != 4 || ids[2] != 6 {
		t.Fatalf("ids %v", ids)
	}
	if tab.alloc() != nil {
		t.Fatal("alloc on a full table")
	}
	if tab.get(5) != nil || tab.get(1) != a {
		t.Fatal("lookup by id")
	}
	if tab.floor != 1 {
		t.Fatalf("floor %d", tab.floor)
	}
	tab.free(a)
	if tab.floor != 3 {
		t.Fatalf("floor after freeing the oldest: %d, want 3", tab.floor)
	}
}

func TestFailAndClose(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	e.Submit(2, wire.OpRead, 0, 0, 512, make([]byte, 512))
	sendAll(e)
	e.Close()
	c := completions(e)
	if c[1] != syscall.EIO || c[2] != syscall.EIO {
		t.Fatalf("Close: %v", c)
	}
	e.Submit(3, wire.OpWrite, 0, 0, 512, nil)
	if c := completions(e); c[3] != syscall.EIO {
		t.Fatalf("submit after Close: %v", c)
	}
	if e.HasReady() {
		t.Fatal("closed engine has work")
	}
}

func TestDetach(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	id := sendAll(e)[0]
	e.Detach()
	if rd := e.Ready(); rd.Disconnect {
		t.Fatal("DISCONNECT with a transaction in flight")
	}
	e.Advance()
	reply(e, id, wire.OpWrite, 0)
	rd := e.Ready()
	if !rd.Disconnect {
		t.Fatal("no DISCONNECT once idle")
	}
	e.Advance()
	if e.HasReady() {
		t.Fatal("DISCONNECT sent twice")
	}
	e.Step(wire.Reply{Op: wire.OpDisconnect})
	if !e.Detached() {
		t.Fatal("echo not seen")
	}
}

func TestInReadyMisusePanics(t *testing.T) {
	e := up(t, cfg(), 64)
	e.Submit(1, wire.OpWrite, 0, 0, 512, nil)
	e.Ready()
	defer func() {
		if recover() == nil {
			t.Fatal("Tick between Ready and Advance did not panic")
		}
	}()
	e.Tick()
}

// TestRandomEvents drives the engine with random interleavings of every
// input and checks its invariants: every request completes exactly once,
// never while its buffer is in use, within the retry bound; the in-flight
// limit holds; ids are resent, never renumbered.
func TestRandomEvents(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 42))
		c := Config{Capacity: 8, Timeout: uint64(1 + rng.IntN(6)), Retries: rng.IntN(4),
			Ping: uint64(1 + rng.IntN(5)), BackoffMin: 1, BackoffMax: 4}
		e := New(c)
		limit := 1 + rng.IntN(6)
		type req struct {
			id        uint64
			submitted uint64
			done      bool
			op        wire.Op
		}
		reqs := map[Handle]*req{}
		byID := map[uint64]Handle{}
		var onWire []uint64 // ids sent on the current connection, unanswered
		inRecv := map[uint64]bool{}
		next := Handle(0)
		check := func() {
			for _, cp := range e.TakeCompletions(nil) {
				r := reqs[cp.Handle]
				if r == nil || r.done {
					t.Fatalf("seed %d: completion for %d twice or unknown", seed, cp.Handle)
				}
				if inRecv[r.id] {
					t.Fatalf("seed %d: completed while receiving", seed)
				}
				if cp.Err == syscall.EIO && e.Now()-r.submitted > c.Timeout*uint64(c.Retries+1) {
					t.Fatalf("seed %d: failed after %d ticks, bound %d", seed, e.Now()-r.submitted, c.Timeout*uint64(c.Retries+1))
				}
				r.done = true
			}
			if e.sent > e.maxInflight && e.State() == Up {
				t.Fatalf("seed %d: %d sent over a limit of %d", seed, e.sent, e.maxInflight)
			}
		}
		for step := 0; step < 400; step++ {
			switch k := rng.IntN(10); {
			case k < 3 && e.tab.used < 8:
				op := []wire.Op{wire.OpRead, wire.OpWrite, wire.OpFlush}[rng.IntN(3)]
				var buf []byte
				if op == wire.OpRead {
					buf = make([]byte, 512)
				}
				e.Submit(next, op, 0, 0, 512, buf)
				reqs[next] = &req{submitted: e.Now(), op: op}
				next++
			case k < 5 && len(onWire) > 0:
				i := rng.IntN(len(onWire))
				id := onWire[i]
				onWire = append(onWire[:i], onWire[i+1:]...)
				h, ok := byID[id]
				if !ok {
					break
				}
				if reqs[h].op == wire.OpRead && rng.IntN(4) > 0 {
					if b := e.Receiving(id, 512); b != nil {
						inRecv[id] = true
						check()
						inRecv[id] = false
					}
					e.Step(wire.Reply{Op: wire.OpRead, ID: id, Length: 512})
				} else {
					e.Step(wire.Reply{Op: reqs[h].op, ID: id})
				}
			case k < 7:
				e.Tick()
			case k == 7 && e.State() == Up && rng.IntN(3) == 0:
				e.ConnDown()
				onWire = nil
			default:
				if e.HasReady() {
					rd := e.Ready()
					for _, x := range rd.Send {
						if old, ok := byID[x.ID]; ok && old != x.Handle && !reqs[old].done {
							t.Fatalf("seed %d: id %d reused for another live request", seed, x.ID)
						}
						byID[x.ID] = x.Handle
						if reqs[x.Handle].id != 0 && reqs[x.Handle].id != x.ID {
							t.Fatalf("seed %d: request renumbered", seed)
						}
						reqs[x.Handle].id = x.ID
						onWire = append(onWire, x.ID)
					}
					dial, closeConn := rd.Dial, rd.CloseConn
					e.Advance()
					if closeConn {
						e.ConnDown()
						onWire = nil
					}
					if dial {
						if rng.IntN(3) == 0 {
							e.DialFailed()
						} else {
							e.ConnUp(limit)
						}
					}
				}
			}
			check()
		}
		// Drain: with the network gone, everything fails within the bound.
		e.ConnDown()
		for range c.Timeout*uint64(c.Retries+1) + 1 {
			e.Tick()
			if e.HasReady() {
				e.Ready()
				e.Advance()
				e.DialFailed()
			}
			check()
		}
		for h, r := range reqs {
			if !r.done {
				t.Fatalf("seed %d: request %d never completed", seed, h)
			}
		}
	}
}
