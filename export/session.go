package export

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/wire"
)

// Sessions and the session record (PROTOCOL.md §5)
//
// A session outlives its connections: it holds the record of recent
// transactions, the floor, and the session's current connection, to which
// every reply goes (§5.3 rule 5). Everything in it is guarded by mu, and
// the two places that change the record are:
//
//   - dispatch (a connection's loop, for each request it reads): fence
//     check, floor, record lookup, and for a new transaction the request
//     checks and the entry marked executing, all under mu; the loop then
//     executes the op on its own ring;
//   - finish (the loop of the connection that read the op, when it has
//     completed): record the status, queue the reply on the session's
//     current connection, under mu. That connection may be another one
//     (after a resume): the reply then goes through its cross-thread
//     queue.
//
// The recovery barrier (PROTOCOL.md §5.4 step 3): when a connection
// resumes the session, attach counts the transactions still executing
// (barrier). Until every one of them has finished, the new connection
// executes nothing: a request that dispatch would execute (a new
// transaction, a READ executed again) is parked, in arrival order, in the
// session (parked), before the record is touched. Everything that
// executes nothing goes on at once: PINGs, a resend of an executing id
// (rule 1: its reply comes when the first copy completes), answers from
// the record (rule 2), refusals below the floor (rule 4). finish counts
// the barrier down (an op whose connection is not the current one was
// executing at the resume: every op dispatched since came from the
// current connection) and, at zero, kicks the current connection, whose
// loop then dispatches the parked requests in order (dispatchParked). If
// the current connection changes again (another resume, or it ends)
// before that, its parked requests are dropped unanswered: they were never
// dispatched, so they were not acknowledged, and the client resends them.
// The ring thread never blocks on the barrier; PINGs keep the link alive
// while it holds.
//
// Lock order: Server.mu, then session.mu, then a conn's cross-thread
// queue lock (xqueue.mu).

const (
	// recordSize is the number of ids the record holds (§5.3: at least
	// 65536). An id lives in entry id mod recordSize.
	recordSize = 1 << 16
	chunkShift = 10
	chunkSize  = 1 << chunkShift
	numChunks  = recordSize / chunkSize
)

// Entry states.
const (
	stateEmpty uint8 = iota
	stateExecuting
	stateDone
)

// entry is one transaction of the record: 16 bytes, no pointers (the
// record is not scanned by the garbage collector).
type entry struct {
	id     uint64
	handle uint32 // executing: 1 + index in record.ops
	status uint16 // done: the reply status
	state  uint8
	op     uint8 // wire.Op
}

// record is the ring of §5.3. Its chunks are allocated the first time an
// id falls in them, so a short session costs 16 KiB, not 1 MiB.
type record struct {
	chunks [numChunks]*[chunkSize]entry
	ops    []*op    // executing ops, by handle-1
	free   []uint32 // free indices of ops
}

func (r *record) entry(id uint64) *entry {
	i := id % recordSize
	c := r.chunks[i>>chunkShift]
	if c == nil {
		c = new([chunkSize]entry)
		r.chunks[i>>chunkShift] = c
	}
	return &c[i&(chunkSize-1)]
}

// add stores an executing op and returns its handle (≥ 1).
func (r *record) add(o *op) uint32 {
	if n := len(r.free); n > 0 {
		i := r.free[n-1]
		r.free = r.free[:n-1]
		r.ops[i] = o
		return i + 1
	}
	r.ops = append(r.ops, o)
	return uint32(len(r.ops))
}

func (r *record) remove(handle uint32) {
	r.ops[handle-1] = nil
	r.free = append(r.free, handle-1)
}

type session struct {
	srv   *Server
	token wire.Token
	exp   *export
	log   *zap.Logger

	mu        sync.Mutex
	current   *conn // where replies go; nil while detached
	floor     uint64
	rec       record
	executing int       // ops recorded executing
	detached  time.Time // when current became nil
	gone      bool      // forgotten (DISCONNECT, linger, shutdown)

	// The recovery barrier. barrier: ops executing when current
	// attached (resumed) that have not finished; every one of them has
	// an origin other than current. parked: requests read by current
	// and held back until barrier is zero, in arrival order (their
	// MaxInflight counts and buffers stay charged to current). spare:
	// the other half of parked's double buffer (no allocation per
	// resume once both exist). hasParked mirrors len(parked) > 0 for
	// the loop's check without the lock.
	barrier   int
	parked    []*op
	spare     []*op
	hasParked atomic.Bool
}

// Outcomes of dispatch that the reader acts on.
type dispatchResult uint8

const (
	dispatched dispatchResult = iota // answered at once, or waiting for a copy
	execute                          // recorded executing: the caller executes o
	fenced                           // the conn is no longer current: stop reading
	collision                        // protocol violation: close the conn
	parked                           // held back by the recovery barrier: the session owns o
)

// dispatch applies the rules of §5.3 to op o, read on conn c (and called
// on c's loop), and either records it executing (execute: the caller then
// owns o and executes it), answers it at once, drops it (it owns o then),
// or parks it behind the recovery barrier (parked: the session owns o
// until c's loop dispatches it again, or drops it).
func (s *session) dispatch(c *conn, o *op) (dispatchResult, uint64) {
	s.mu.Lock()
	if s.current != c || s.gone {
		// §5.4 step 1: nothing read on a replaced connection is
		// dispatched after the fence.
		s.mu.Unlock()
		o.release(c)
		return fenced, 0
	}
	if o.id == 0 {
		// §3: transaction ids are ≥ 1. A client bug, not a framing
		// error: refuse it without touching the record.
		c.replyLocked(o, wire.StatusEINVAL)
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	}
	s.floor = max(s.floor, o.reqFloor)
	if o.id < s.floor {
		// Rule 4: below the floor, the entry may be gone.
		c.replyLocked(o, wire.StatusESTALE)
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	}
	e := s.rec.entry(o.id)
	switch {
	case e.state == stateEmpty || e.id < o.id && e.state == stateDone:
		// A new transaction (evicting an older done one).
	case e.id > o.id:
		// Rule 4: evicted by a newer id.
		c.replyLocked(o, wire.StatusESTALE)
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	case e.id < o.id: // executing: the ring would lose it
		if s.barredLocked() {
			// The old id may be one the barrier waits for: once it
			// has finished, this one simply evicts it.
			s.parkLocked(o)
			s.mu.Unlock()
			return parked, 0
		}
		other := e.id
		s.mu.Unlock()
		o.release(c)
		return collision, other
	case wire.Op(e.op) != o.wop:
		// §5.1: an id is never reused for another request. Refuse
		// without touching the record.
		s.log.Warn("request reuses a transaction id for another op",
			zap.Uint64("id", o.id), zap.Stringer("op", o.wop), zap.Stringer("recorded", wire.Op(e.op)))
		c.replyLocked(o, wire.StatusEINVAL)
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	case e.state == stateExecuting:
		// Rule 1: not executed again; the first copy's completion
		// answers, once, on the current connection. The transaction is
		// counted once against this connection's MaxInflight.
		s.exp.dups.Add(1)
		first := s.rec.ops[e.handle-1]
		if first.counted == c {
			c.inflight.Add(-1)
		} else {
			first.counted = c
		}
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	case o.wop != wire.OpRead:
		// Rule 2: done, answered from the record.
		s.exp.dups.Add(1)
		c.replyLocked(o, wire.Status(e.status))
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	}
	// A new transaction, or a READ executed again (rule 2).
	if s.barredLocked() {
		s.parkLocked(o)
		s.mu.Unlock()
		return parked, 0
	}
	if st := c.check(o); st != wire.StatusOK {
		*e = entry{id: o.id, state: stateDone, status: uint16(st), op: uint8(o.wop)}
		c.replyLocked(o, st)
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	}
	o.sess = s
	o.counted = c
	o.handle = s.rec.add(o)
	*e = entry{id: o.id, state: stateExecuting, handle: o.handle, op: uint8(o.wop)}
	s.executing++
	o.bop = backendOp(o.wop)
	o.bflags = backendFlags(o.flags)
	o.start = metrics.Now()
	s.exp.io.Start()
	s.mu.Unlock()
	return execute, 0
}

// finish is the end of op o, read and executed by c (on c's loop): it
// records the result and sends the reply to the session's current
// connection, or keeps it in the record (rule 5).
func (c *conn) finish(o *op, err error) {
	c.ops--
	c.srv.executing.Add(-1)
	st := wire.StatusOf(err)
	s := o.sess
	s.exp.io.Done(metricsOp(o.wop), o.length, metrics.Now()-o.start, err != nil)
	if err != nil {
		s.log.Warn("request failed", zap.Stringer("op", o.wop), zap.Uint64("id", o.id),
			zap.Uint64("offset", o.off), zap.Uint32("length", o.length), zap.Stringer("status", st), zap.Error(err))
	}
	s.mu.Lock()
	e := s.rec.entry(o.id)
	if e.id == o.id && e.state == stateExecuting && e.handle == o.handle {
		*e = entry{id: o.id, state: stateDone, status: uint16(st), op: uint8(o.wop)}
	}
	s.rec.remove(o.handle)
	s.executing--
	if s.barrier > 0 && s.current != nil && o.origin != s.current {
		// An op of an earlier connection: it was executing when the
		// current one resumed the session.
		s.barrier--
		if s.barrier == 0 && len(s.parked) > 0 {
			s.current.x.kick() // dispatchParked
		}
	}
	kept := false
	if cur := s.current; cur != nil {
		r := reply{hdr: wire.Reply{Op: o.wop, ID: o.id, Status: st}, counted: o.counted}
		if o.wop == wire.OpRead && st == wire.StatusOK {
			r.hdr.Length = o.length
			r.op = o
		}
		if cur == c {
			kept = c.queueReply(r) && r.op != nil
		} else {
			kept = cur.x.push(xevent{kind: evReply, r: r}) && r.op != nil
		}
	}
	s.mu.Unlock()
	if !kept {
		o.release(c)
	}
}

// attach makes c the session's current connection, fencing the previous
// one (§5.4 step 1): it is closed and nothing it still reads is
// dispatched, and the requests it had parked behind a barrier are dropped.
// c executes nothing until every op executing now has finished (the
// recovery barrier, §5.4 step 3). It returns the previous connection, if
// any, and the number of ops the barrier waits for.
func (s *session) attach(c *conn) (*conn, int) {
	s.mu.Lock()
	old := s.current
	s.current = c
	s.barrier = s.executing
	barrier := s.barrier
	drop := s.takeParkedLocked()
	s.mu.Unlock()
	s.dropParked(drop, nil)
	if old != nil {
		old.abort("fenced: the session was resumed on another connection")
	}
	return old, barrier
}

// detach clears c as the current connection, if it still is, drops the
// requests it had parked, and reports whether it did.
func (s *session) detach(c *conn) bool {
	s.mu.Lock()
	if s.current != c {
		s.mu.Unlock()
		return false
	}
	s.current = nil
	s.detached = time.Now()
	drop := s.takeParkedLocked()
	s.mu.Unlock()
	s.dropParked(drop, c)
	return true
}

// barredLocked reports whether a request of the current connection that
// would execute must wait: the barrier holds, or requests parked before
// it are not yet dispatched (arrival order is kept).
func (s *session) barredLocked() bool { return s.barrier > 0 || len(s.parked) > 0 }

func (s *session) parkLocked(o *op) {
	s.parked = append(s.parked, o)
	s.hasParked.Store(true)
}

// takeParkedLocked empties parked and returns what it held (nil if
// nothing). The caller hands the slice back with putParked.
func (s *session) takeParkedLocked() []*op {
	if len(s.parked) == 0 {
		return nil
	}
	list := s.parked
	s.parked, s.spare = s.spare[:0], nil
	s.hasParked.Store(false)
	return list
}

func (s *session) putParked(list []*op) {
	clear(list)
	s.mu.Lock()
	if s.spare == nil {
		s.spare = list[:0]
	}
	s.mu.Unlock()
}

// dropParked gives back requests that were parked and never dispatched:
// their MaxInflight counts and buffers. on is the connection whose loop
// runs this, or nil.
func (s *session) dropParked(list []*op, on *conn) {
	if list == nil {
		return
	}
	s.log.Info("dropping requests held back by the recovery barrier: their connection was replaced or ended",
		zap.Int("requests", len(list)))
	for i, o := range list {
		o.origin.inflight.Add(-1)
		o.release(on)
		list[i] = nil
	}
	s.putParked(list)
}

// dispatchParked runs on c's loop while c reads: once the barrier has
// gone, it dispatches the requests parked behind it, in arrival order.
func (c *conn) dispatchParked() {
	s := c.sess
	if !s.hasParked.Load() {
		return
	}
	s.mu.Lock()
	if s.current != c || s.barrier > 0 {
		s.mu.Unlock()
		return
	}
	list := s.takeParkedLocked()
	s.mu.Unlock()
	if list == nil {
		return
	}
	for i, o := range list {
		list[i] = nil
		if c.state != stRunning {
			// Fenced or closed by one of them: the rest are never
			// dispatched (§5.4 step 1).
			c.inflight.Add(-1)
			o.release(c)
			continue
		}
		c.dispatchOp(o)
	}
	s.putParked(list)
}
