package export

import (
	"sync"
	"time"

	"go.uber.org/zap"

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
}

// Outcomes of dispatch that the reader acts on.
type dispatchResult uint8

const (
	dispatched dispatchResult = iota // answered at once, or waiting for a copy
	execute                          // recorded executing: the caller executes o
	fenced                           // the conn is no longer current: stop reading
	collision                        // protocol violation: close the conn
)

// dispatch applies the rules of §5.3 to op o, read on conn c (and called
// on c's loop), and either records it executing (execute: the caller then
// owns o and executes it), answers it at once, or drops it (it owns o
// then).
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
		c.replyLocked(o, wire.Status(e.status))
		s.mu.Unlock()
		o.release(c)
		return dispatched, 0
	}
	// A new transaction, or a READ executed again (rule 2).
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
// one (§5.4 step 1): it is closed and nothing it still reads is dispatched.
// It returns the previous connection, if any.
func (s *session) attach(c *conn) *conn {
	s.mu.Lock()
	old := s.current
	s.current = c
	s.mu.Unlock()
	if old != nil {
		old.abort("fenced: the session was resumed on another connection")
	}
	return old
}

// detach clears c as the current connection, if it still is, and reports
// whether it did.
func (s *session) detach(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current != c {
		return false
	}
	s.current = nil
	s.detached = time.Now()
	return true
}
