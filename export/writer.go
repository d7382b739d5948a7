package export

import (
	"net"
	"sync"
	"time"

	"github.com/dst-dev/dst/internal/wire"
)

// The writer: one goroutine per connection, the only one that writes to
// it after the handshake.
//
// Producers (the conn's reader for pings and immediate answers, any
// Worker's Done for completions routed to this connection) append replies
// to the reply queue under its lock and wake the writer through a channel
// of capacity 1; they never block. The writer takes the whole queue at once
// (so replies that arrive while a writev is in progress form the next
// batch), encodes the headers into one arena, and sends headers and READ
// payloads — straight from the I/O buffers — with one net.Buffers.WriteTo,
// which is a writev on TCP and Unix sockets. Then it gives the READ buffers
// back.
//
// The queue is bounded by admission, not by its own capacity: every
// transaction reply was admitted by some connection's reader under
// MaxInflight, and the counts are given back here just before the write
// (a reply the client can see has always been uncounted first, so a
// conforming client never trips the limit). Pings are bounded by pingSem.

// maxPendingPings bounds the ping replies waiting to be written; beyond
// it the reader waits (backpressure) instead of queueing more.
const maxPendingPings = 64

type reply struct {
	hdr     wire.Reply
	op      *op   // a successful READ: the payload is op.buf, released after the write
	counted *conn // gives back one MaxInflight count, if set
	ping    bool  // gives back a pingSem token
	final   bool  // GOODBYE or the DISCONNECT echo: the last reply on this connection
}

type replyQueue struct {
	mu     sync.Mutex
	items  []reply
	closed bool
	wake   chan struct{}
}

// push queues r and wakes the writer. It never blocks. It returns false if
// the queue is closed (the connection is going away or has sent its final
// reply); the caller keeps ownership of r.op then. A final reply closes
// the queue behind it.
func (q *replyQueue) push(r reply) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, r)
	if r.final {
		q.closed = true
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// replyLocked queues an immediate answer to o (from the record, or an
// error) on c. It is called with o's session locked and c current.
func (c *conn) replyLocked(o *op, st wire.Status) {
	c.q.push(reply{hdr: wire.Reply{Op: o.wop, ID: o.id, Status: st}, counted: c})
}

// writeLoop is the writer goroutine. It exits after writing a final reply,
// on a write error (aborting the connection), or when the connection is
// aborted; in every case it releases what is left in the queue.
func (c *conn) writeLoop() {
	defer close(c.wdone)
	defer c.drainQueue()
	var batch []reply
	for {
		select {
		case <-c.q.wake:
		case <-c.kill:
			return
		}
		c.q.mu.Lock()
		batch, c.q.items = c.q.items, batch[:0]
		c.q.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		final, err := c.writeBatch(batch)
		for i := range batch {
			if batch[i].op != nil {
				batch[i].op.release()
			}
			batch[i] = reply{}
		}
		if err != nil {
			c.abortf("write: %v", err)
			return
		}
		if final {
			return
		}
	}
}

// writeBatch encodes and sends one batch.
func (c *conn) writeBatch(batch []reply) (final bool, err error) {
	need := len(batch) * wire.ReplyHeaderSize
	if cap(c.hdrs) < need {
		c.hdrs = make([]byte, need+need/2)
	}
	hdrs := c.hdrs[:need]
	bufs := c.bufs[:0]
	run := -1 // start in hdrs of the header run in bufs[len-1], or -1
	for i := range batch {
		r := &batch[i]
		at := i * wire.ReplyHeaderSize
		r.hdr.Put(hdrs[at : at+wire.ReplyHeaderSize])
		if run >= 0 {
			bufs[len(bufs)-1] = hdrs[run : at+wire.ReplyHeaderSize] // adjacent headers: one iovec
		} else {
			run = at
			bufs = append(bufs, hdrs[at:at+wire.ReplyHeaderSize])
		}
		if r.op != nil {
			bufs = append(bufs, r.op.buf.b[:r.hdr.Length])
			run = -1
		}
		if r.counted != nil {
			r.counted.inflight.Add(-1)
		}
		if r.ping {
			<-c.pingSem
		}
		final = final || r.final
	}
	if t := c.srv.cfg.IdleTimeout; t > 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(t))
	}
	c.iov = net.Buffers(bufs)
	_, err = c.iov.WriteTo(c.nc)
	clear(bufs)
	c.bufs = bufs[:0]
	return final, err
}

// drainQueue closes the queue and releases what is in it.
func (c *conn) drainQueue() {
	c.q.mu.Lock()
	c.q.closed = true
	items := c.q.items
	c.q.items = nil
	c.q.mu.Unlock()
	for i := range items {
		r := &items[i]
		if r.op != nil {
			r.op.release()
		}
		if r.ping {
			<-c.pingSem
		}
	}
}
