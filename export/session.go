package export

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/wire"
)

// Sessions and the session record (PROTOCOL.md §5)
//
// A session outlives its connections: it holds the record of recent
// transactions, the floor, and the session's current connection, to which
// every reply goes (§5.3 rule 5). Everything in it is guarded by mu, and
// the two places that change the record are:
//
//   - dispatch (a conn's reader, for each request): fence check, floor,
//     record lookup, and for a new transaction the request checks and the
//     Submit, all under mu;
//   - complete (a Worker's goroutine, for each op): record the status,
//     queue the reply on the current connection, under mu.
//
// Lock order: Server.mu, then session.mu, then a conn's reply queue lock.

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
	executing int           // ops recorded executing
	drained   chan struct{} // closed when executing drops to 0 (if someone waits)
	detached  time.Time     // when current became nil
	gone      bool          // forgotten (DISCONNECT, linger, shutdown)
}

// Outcomes of dispatch that the reader acts on.
type dispatchResult uint8

const (
	dispatched dispatchResult = iota // submitted, answered, or waiting for a copy
	fenced                           // the conn is no longer current: stop reading
	collision                        // protocol violation: close the conn
)

// dispatch applies the rules of §5.3 to op o, read on conn c, and either
// submits it, answers it at once, or drops it. It owns o from here on.
func (s *session) dispatch(c *conn, o *op) (dispatchResult, uint64) {
	s.mu.Lock()
	if s.current != c || s.gone {
		// §5.4 step 1: nothing read on a replaced connection is
		// dispatched after the fence.
		s.mu.Unlock()
		o.release()
		return fenced, 0
	}
	if o.id == 0 {
		// §3: transaction ids are ≥ 1. A client bug, not a framing
		// error: refuse it without touching the record.
		c.replyLocked(o, wire.StatusEINVAL)
		s.mu.Unlock()
		o.release()
		return dispatched, 0
	}
	s.floor = max(s.floor, o.reqFloor)
	if o.id < s.floor {
		// Rule 4: below the floor, the entry may be gone.
		c.replyLocked(o, wire.StatusESTALE)
		s.mu.Unlock()
		o.release()
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
		o.release()
		return dispatched, 0
	case e.id < o.id: // executing: the ring would lose it
		other := e.id
		s.mu.Unlock()
		o.release()
		return collision, other
	case wire.Op(e.op) != o.wop:
		// §5.1: an id is never reused for another request. Refuse
		// without touching the record.
		s.log.Warn("request reuses a transaction id for another op",
			zap.Uint64("id", o.id), zap.Stringer("op", o.wop), zap.Stringer("recorded", wire.Op(e.op)))
		c.replyLocked(o, wire.StatusEINVAL)
		s.mu.Unlock()
		o.release()
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
		o.release()
		return dispatched, 0
	case o.wop != wire.OpRead:
		// Rule 2: done, answered from the record.
		c.replyLocked(o, wire.Status(e.status))
		s.mu.Unlock()
		o.release()
		return dispatched, 0
	}
	// A new transaction, or a READ executed again (rule 2).
	if st := c.check(o); st != wire.StatusOK {
		*e = entry{id: o.id, state: stateDone, status: uint16(st), op: uint8(o.wop)}
		c.replyLocked(o, st)
		s.mu.Unlock()
		o.release()
		return dispatched, 0
	}
	o.sess = s
	o.counted = c
	o.handle = s.rec.add(o)
	*e = entry{id: o.id, state: stateExecuting, handle: o.handle, op: uint8(o.wop)}
	s.executing++
	f := s.exp.file
	o.req.File = f
	o.req.Op = backendOp(o.wop)
	o.req.Flags = backendFlags(o.flags)
	o.req.Off = o.off
	o.req.Length = o.length
	if o.buf != nil {
		o.req.Buf = o.buf.b
	} else {
		o.req.Buf = nil
	}
	c.ex.submit(o) // never blocks
	s.mu.Unlock()
	return dispatched, 0
}

// complete is the op's backend.Request.Done: on a Worker goroutine, it
// must not block. It records the result and sends the reply to the
// session's current connection, or keeps it in the record (rule 5).
func (o *op) complete(_ *backend.Request, err error) {
	ex := o.ex
	ex.next()
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
		kept = cur.q.push(r) && r.op != nil
	}
	if s.executing == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.mu.Unlock()
	if !kept {
		o.release()
	}
	ex.finished()
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

// waitDrained waits until no op of the session is executing, while c is
// the current connection. It returns false if c stopped being current or
// was aborted.
func (s *session) waitDrained(c *conn) bool {
	for {
		s.mu.Lock()
		if s.current != c || s.gone {
			s.mu.Unlock()
			return false
		}
		if s.executing == 0 {
			s.mu.Unlock()
			return true
		}
		if s.drained == nil {
			s.drained = make(chan struct{})
		}
		ch := s.drained
		s.mu.Unlock()
		select {
		case <-ch:
		case <-c.kill:
			return false
		}
	}
}
