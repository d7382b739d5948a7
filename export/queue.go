package export

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/wire"
)

// Replies and the cross-thread queue
//
// A connection's loop sends the replies in its out list, in order, one
// WRITEV at a time (loop.go). Replies reach the list in three ways:
//
//   - the loop itself: immediate answers of dispatch (record, refusals),
//     PINGs, and the completions of ops it executed while the session's
//     current connection is this one — the normal path, no hand-over;
//   - another connection's loop, whose op completed after the session was
//     resumed here (§5.3 rule 5): through this connection's xqueue;
//   - nobody else: every reply is produced on some connection's loop.
//
// The xqueue is a locked slice plus an eventfd whose read the loop keeps
// armed on its ring: a producer appends, and writes the eventfd unless a
// wake-up is already on its way (pending). The loop clears pending when
// the read completes, then takes the whole slice. The same queue carries
// the results of the sync helpers (backend StepSync) and bare kicks
// (Shutdown, abort, the test hold, buffer budget given back by another
// thread). Once the loop has gone, the queue is closed: push fails and the
// producer keeps ownership of what it pushed.
//
// The queue is bounded by admission, not by its own capacity: every
// transaction reply was admitted by some connection's loop under
// MaxInflight, and sync results are bounded by the ops of this connection.

// maxPendingPings bounds the ping replies waiting for the sender; beyond
// it the loop stops parsing (backpressure) instead of queueing more.
const maxPendingPings = 64

type reply struct {
	hdr     wire.Reply
	op      *op   // a successful READ: the payload is op.buf, released after the send
	counted *conn // gives back one MaxInflight count, if set
	ping    bool  // counts against maxPendingPings
	final   bool  // GOODBYE or the DISCONNECT echo: the last reply on this connection
}

// Kinds of cross-thread events.
const (
	evKick  uint8 = iota // nothing but a wake-up: re-check the flags
	evReply              // r: a reply for this connection
	evSync               // o: an op finished by a sync helper (o.err)
)

type xevent struct {
	kind uint8
	r    reply
	o    *op
}

type xqueue struct {
	mu      sync.Mutex
	items   []xevent
	closed  bool
	pending bool // an eventfd write is on its way to the loop
	efd     int  // the eventfd, -1 before the ring exists and once closed
}

// push queues ev and wakes the loop. It never blocks. It returns false if
// the loop has gone; the caller keeps ownership of what ev refers to.
func (q *xqueue) push(ev xevent) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, ev)
	q.wakeLocked()
	q.mu.Unlock()
	return true
}

// kick wakes the loop (to re-check its flags). It never blocks.
func (q *xqueue) kick() {
	q.mu.Lock()
	if !q.closed {
		q.wakeLocked()
	}
	q.mu.Unlock()
}

// wakeLocked writes the eventfd unless a write is already pending. The
// write happens under the lock, so that close cannot close the eventfd
// (and a new file reuse its number) in between.
func (q *xqueue) wakeLocked() {
	if q.pending || q.efd < 0 {
		return
	}
	q.pending = true
	one := uint64(1)
	unix.Write(q.efd, (*[8]byte)(unsafe.Pointer(&one))[:]) //nolint:errcheck // a full counter still wakes
}

// woken is called by the loop when the eventfd read completed: later
// producers write the eventfd again.
func (q *xqueue) woken() {
	q.mu.Lock()
	q.pending = false
	q.mu.Unlock()
}

// take moves the queued events into buf (emptied first) and returns it.
func (q *xqueue) take(buf []xevent) []xevent {
	q.mu.Lock()
	buf, q.items = q.items, buf[:0]
	q.mu.Unlock()
	return buf
}

// close makes push fail from now on, closes the eventfd, and returns what
// was still queued.
func (q *xqueue) close() []xevent {
	q.mu.Lock()
	q.closed = true
	if q.efd >= 0 {
		unix.Close(q.efd)
		q.efd = -1
	}
	items := q.items
	q.items = nil
	q.mu.Unlock()
	return items
}
