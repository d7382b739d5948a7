package export

import (
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/ringio"
	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
)

// The connection loop
//
// One goroutine, locked to its OS thread, owns the connection's io_uring
// ring and does everything for the connection:
//
//	Wait (one io_uring_enter: submit what the last batch prepared, sleep
//	until a completion) → for each CQE, by the kind in its user data:
//	  RECV   bytes in the staging buffer (or a WRITE payload received
//	         straight into its buffer, ringio.Receiver.ReadInto);
//	  disk   backend Result → finish: record the status, queue the reply
//	         (on this loop when the session's current connection is this
//	         one; else on the current connection's xqueue);
//	  SEND   the WRITEV of the previous replies is done: give their READ
//	         buffers back;
//	  wake   the eventfd: take the cross-thread events (xqueue);
//	→ then, in step: parse every complete request in the staging buffer
//	  (header → wire.ParseRequest → buffer → WRITE payload → dispatch under
//	  the session lock → backend Prep of an SQE on this ring, or an inline
//	  copy for memory files), start one WRITEV of every queued reply, and
//	  re-arm the RECV unless the connection holds MaxBufferBytes of
//	  buffers (backpressure is not reading).
//
// So a request crosses no thread on its normal path: the thread that
// reads it executes it and sends its reply, and one io_uring_enter per
// batch serves the socket and the disk together.
//
// Ending: reading stops for a reason (endKind). Shutdown and DISCONNECT
// drain — keep sending replies until the session has nothing executing,
// then the final reply (GOODBYE, the DISCONNECT echo) — everything else
// closes at once. Closing shuts the socket down (so that a RECV or WRITEV
// in flight completes), cancels them, drops the unsent replies, and waits
// until every SQE of this ring has completed and every op read here has
// finished (the disk I/O in flight, the sync helpers, ops parked by the
// test hold): no buffer is given back while the kernel may still use it.
// Only then are the ring, the socket and the eventfd closed.

// User data of the ring's SQEs: the kind in the top byte; for disk I/O
// the op's slot in the low bits.
const (
	kindShift  = 56
	kindRecv   = 1
	kindSend   = 2
	kindWake   = 3
	kindDisk   = 4
	kindCancel = 5
	udRecv     = kindRecv << kindShift
	udSend     = kindSend << kindShift
	udWake     = kindWake << kindShift
	udCancel   = kindCancel << kindShift
)

type loopState uint8

const (
	stRunning  loopState = iota // reading requests
	stDraining                  // not reading; the final reply waits until the session has nothing executing
	stFinal                     // the final reply is queued or being sent; nothing follows it
	stClosing                   // the socket is shut down; waiting for what is in flight
)

const (
	// stagingSize is the Receiver's buffer: the headers of a window of
	// pipelined requests and the small payloads that come with them.
	stagingSize = 256 << 10
	// ringEntries is the SQ size; a batch that needs more submits early.
	ringEntries = 256
	// maxBatch bounds the replies of one WRITEV (at most two iovecs
	// each, within IOV_MAX).
	maxBatch = 512
	// pushChunk: under crypto, every pushChunk bytes of a batch of
	// replies are written to the socket as soon as they are sealed
	// (ringio.Sender.Push, a non-blocking sendmsg), and only the rest
	// waits for the batch's WRITEV. Sealing a whole batch before
	// writing any of it made the client wait for the batch, then this
	// loop wait while the client opened it: the two sides' crypto took
	// turns instead of overlapping. Only while this thread gets a CPU
	// when it wants one (sched.Monitor): on an oversubscribed machine
	// the client has no CPU to overlap with, and the extra writes and
	// wake-ups of a batch cut in pieces cost more than they save. READ
	// replies above pushFrameMax do not count: a batch of large replies
	// still leaves whole (pushing each 128 KiB reply was slower in
	// txn's BenchmarkClientCrypto, docs/BENCHMARKS.md).
	pushChunk    = 32 << 10
	pushFrameMax = 64 << 10
	// directMin: a WRITE payload larger than this that is not all in the
	// staging buffer is received straight into its buffer (no copy);
	// smaller ones wait in the staging buffer for the rest.
	directMin = 64 << 10
)

// setupRing creates the connection's ring and eventfd, on the thread that
// will run the loop (the handshake, before WELCOME).
func (c *conn) setupRing() error {
	cq := uring.RoundPow2(uint32(min(max(c.maxInflight+64, 512), 8192)))
	r, err := uring.New(uring.Options{Entries: ringEntries, CQEntries: cq, SingleIssuer: true, DeferTaskrun: true})
	if err != nil {
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		r.Close()
		return fmt.Errorf("eventfd: %w", err)
	}
	c.ring = r
	c.getSQE = c.sqe
	c.efdVal = new(uint64)
	c.cqes = make([]uring.CQE, 256)
	c.x.mu.Lock()
	c.x.efd = efd
	c.x.mu.Unlock()
	return nil
}

// closeRing releases the ring and eventfd of a connection whose loop never
// ran (nothing was submitted).
func (c *conn) closeRing() {
	if c.ring != nil {
		c.ring.Close()
		c.ring = nil
	}
	c.x.close()
}

// run is the rest of the connection's life after WELCOME.
func (c *conn) run() {
	if err := c.attachSocket(); err != nil {
		c.log.Warn("closing connection: cannot hand the socket to io_uring", zap.Error(err))
		c.abort("no socket")
		c.closeRing()
		return
	}
	if c.exp.mem != nil {
		// A fault on the export's mapping (the file was truncated, or
		// tmpfs is full when a write reaches a hole) becomes a panic that
		// the inline copies recover from, instead of killing the process.
		debug.SetPanicOnFault(true)
	}
	c.rcv = ringio.NewReceiver(c.fd, udRecv, stagingSize)
	c.snd = ringio.NewSender(c.fd, udSend)
	c.silentSince = time.Now()
	c.armWake()
	if c.loop() {
		c.teardown()
	}
}

// attachSocket takes the socket out of Go's poller for the ring, or
// bridges a conn that has no descriptor.
func (c *conn) attachSocket() error {
	if _, ok := c.nc.(syscall.Conn); ok {
		fd, err := ringio.DetachFd(c.nc)
		if err != nil {
			return err
		}
		c.fd = fd
		return nil
	}
	fd, err := c.startBridge()
	if err != nil {
		return err
	}
	c.fd = fd
	return nil
}

// loop runs until the connection is closed and quiet. It returns false if
// the ring broke (nothing may be released then).
func (c *conn) loop() bool {
	c.step()
	for !c.done() {
		n, err := c.ring.Wait(c.cqes, c.waitTimeout())
		switch {
		case err == uring.ErrTimeout:
			c.onTimeout()
		case err != nil:
			c.log.Error("io_uring wait failed: abandoning the connection and its buffers", zap.Error(err))
			c.leak()
			return false
		}
		for i := range n {
			c.handleCQE(&c.cqes[i])
		}
		c.step()
	}
	return true
}

// quiet: nothing of this connection is in flight but the eventfd read.
func (c *conn) quiet() bool {
	return c.state == stClosing && !c.rcv.Busy() && !c.snd.Busy() && c.ops == 0 && c.cancels == 0
}

func (c *conn) done() bool { return c.quiet() && !c.wakeArmed }

func (c *conn) waitTimeout() int64 {
	idle := c.srv.cfg.IdleTimeout
	if idle <= 0 || c.state == stClosing {
		return -1
	}
	return int64(max(idle/4, time.Millisecond))
}

func (c *conn) handleCQE(cqe *uring.CQE) {
	switch cqe.UserData >> kindShift {
	case kindRecv:
		c.onRecv(cqe.Res)
	case kindSend:
		c.onSend(cqe.Res)
	case kindWake:
		c.wakeArmed = false
		c.x.woken()
		if !c.wakeStop {
			c.armWake()
		}
	case kindDisk:
		c.onDisk(uint32(cqe.UserData), cqe.Res)
	case kindCancel:
		c.cancels--
	}
}

// step is the work after each batch of completions.
func (c *conn) step() {
	c.drainX()
	if c.state < stClosing && c.killed.Load() {
		if c.state == stRunning {
			c.logEnd(endAborted, nil)
		}
		c.startClosing()
	}
	if c.state == stRunning && c.stopFlag.Load() {
		c.endRead(endShutdown, nil)
	}
	if len(c.parked) > 0 && !c.srv.hold.Load() {
		c.unpark()
	}
	if c.state == stRunning {
		c.dispatchParked() // requests held back by the recovery barrier (session.go)
		c.parse()
	}
	if c.state == stDraining {
		c.checkDrained()
	}
	if c.state < stClosing {
		c.flushOut()
	}
	if c.state == stRunning && !c.blocked && c.pend == nil && !c.rcv.Busy() {
		c.armRecv()
	}
	if c.quiet() && c.wakeArmed && !c.wakeStop {
		c.wakeStop = true
		c.cancel(udWake)
	}
}

// armRecv starts the next receive: into the staging buffer; or, after a
// large WRITE with nothing buffered, of the next request header alone, so
// that a stream of large writes has its payloads received straight into
// their buffers rather than copied out of the staging buffer.
func (c *conn) armRecv() {
	if c.bigWrite && !c.haveHdr && len(c.rcv.Buffered()) == 0 {
		if done, err := c.rcv.ReadInto(c.hdr[:], c.getSQE); err == nil && !done {
			c.hdrPend = true
		}
		return
	}
	c.rcv.Arm(c.getSQE)
}

// drainX handles the cross-thread events.
func (c *conn) drainX() {
	evs := c.x.take(c.xbatch)
	for i := range evs {
		ev := &evs[i]
		switch ev.kind {
		case evReply:
			if !c.queueReply(ev.r) && ev.r.op != nil {
				ev.r.op.release(c)
			}
		case evSync:
			o := ev.o
			err := o.err
			o.err = nil
			c.syncBusy--
			c.finish(o, err)
		}
		*ev = xevent{}
	}
	c.xbatch = evs[:0]
}

// queueReply appends r to the replies to send, unless the connection has
// queued its final reply or is closing.
func (c *conn) queueReply(r reply) bool {
	if c.state >= stFinal {
		return false
	}
	c.out = append(c.out, r)
	return true
}

// replyLocked queues an immediate answer to o (from the record, or an
// error) on c. It is called on c's loop, with o's session locked and c
// current.
func (c *conn) replyLocked(o *op, st wire.Status) {
	c.queueReply(reply{hdr: wire.Reply{Op: o.wop, ID: o.id, Status: st}, counted: c})
}

// parse handles every complete request in the staging buffer, until
// reading stops, a WRITE payload must be received first, or a limit is
// reached (buffers, pending pings): then the frame stays where it is and
// the RECV is not re-armed.
func (c *conn) parse() {
	c.blocked = false
	for c.state == stRunning && c.pend == nil && !c.rcv.Busy() {
		var hb []byte
		b := c.rcv.Buffered() // then: what follows the header
		if c.haveHdr {
			hb = c.hdr[:]
		} else {
			if len(b) < wire.RequestHeaderSize {
				return
			}
			hb, b = b[:wire.RequestHeaderSize], b[wire.RequestHeaderSize:]
		}
		req, err := wire.ParseRequest(hb, c.maxTransfer)
		if err != nil {
			c.endRead(endFraming, err)
			return
		}
		c.bigWrite = req.Op == wire.OpWrite && req.Length > directMin
		if c.tag > 0 && req.Op != wire.OpWrite && len(b) < c.tag {
			return // the trailer is not all here
		}
		switch req.Op {
		case wire.OpPing:
			// Answered at once, ahead of I/O not yet completed (§4).
			if c.pings >= maxPendingPings {
				c.blocked = true
				return
			}
			if !c.takeBare(hb, b) {
				continue
			}
			c.reqCount++
			c.pings++
			c.out = append(c.out, reply{hdr: wire.Reply{Op: wire.OpPing, ID: req.ID}, ping: true})
			continue
		case wire.OpDisconnect:
			if !c.takeBare(hb, b) {
				continue
			}
			c.reqCount++
			c.disconnectID = req.ID
			c.endRead(endDisconnect, nil)
			return
		}
		if c.inflight.Load() >= c.maxInflight {
			c.endRead(endFraming, fmt.Errorf("more than %d requests outstanding (MAX_INFLIGHT)", c.maxInflight))
			return
		}
		data := req.Op == wire.OpRead || req.Op == wire.OpWrite
		if req.Op == wire.OpWrite && req.Length <= directMin && len(b) < c.dataBufSize(req.Length) {
			// A small payload not all here: receive more into the
			// staging buffer rather than the rest alone (fewer receives
			// when writes are pipelined).
			return
		}
		if data {
			n := int64(1) << (class(c.dataBufSize(req.Length)) + minBufShift)
			if !c.fits(n) {
				// Backpressure: wait for buffers to come back. Announce
				// the wait before looking again, so that a release on
				// another thread either is seen here or kicks the loop.
				c.budgetWait.Store(true)
				if !c.fits(n) {
					c.blocked = true
					return
				}
			}
			c.budgetWait.Store(false)
			c.bufBytes.Add(n)
		}
		if req.Op != wire.OpWrite && !c.takeBare(hb, b) {
			if data {
				c.bufBytes.Add(-int64(1) << (class(c.dataBufSize(req.Length)) + minBufShift))
			}
			continue
		}
		if req.Op == wire.OpWrite {
			if c.tag > 0 {
				// The frame's place in the stream is taken now, in
				// header order; it is opened once payload and trailer
				// are in (openWrite).
				copy(c.pendHdr[:], hb)
				var err error
				if c.pframe, err = c.cs.Recv.Next(int(req.Length)); err != nil {
					c.bufBytes.Add(-int64(1) << (class(c.dataBufSize(req.Length)) + minBufShift))
					c.rframe = c.pframe
					c.lost(err)
					return
				}
			}
			c.consumeHeader()
		}
		c.reqCount++
		c.inflight.Add(1)
		o := getOp(c.srv)
		o.origin = c
		o.id, o.wop, o.flags = req.ID, req.Op, req.Flags
		o.off, o.length, o.reqFloor = req.Offset, req.Length, req.Floor
		if data {
			o.buf = c.srv.bufs.get(c.dataBufSize(req.Length))
		}
		if req.Op == wire.OpWrite {
			// Always take the whole payload, even for a request that will
			// be refused: the stream stays in sync.
			done, err := c.rcv.ReadInto(o.buf.b[:c.dataBufSize(o.length)], c.getSQE)
			if err != nil {
				c.inflight.Add(-1)
				o.release(c)
				c.endRead(endError, io.ErrUnexpectedEOF)
				return
			}
			if !done {
				c.pend = o // opened and dispatched when the receive completes
				return
			}
			c.openWrite(o)
			continue
		}
		c.dispatchOp(o)
	}
}

// consumeHeader marks the header just parsed as used.
func (c *conn) consumeHeader() {
	if c.haveHdr {
		c.haveHdr = false
		return
	}
	c.rcv.Consume(wire.RequestHeaderSize)
}

// dispatchOp applies the session rules to o and executes it if they say so.
func (c *conn) dispatchOp(o *op) {
	id := o.id
	if h := c.srv.cfg.beforeDispatch; h != nil {
		h(id)
	}
	switch res, other := c.sess.dispatch(c, o); res {
	case execute:
		c.execute(o)
	case fenced:
		c.endRead(endFenced, nil)
	case collision:
		c.endRead(endFraming, fmt.Errorf("id %d would evict id %d, which is still executing: more than %d transactions outstanding in the session",
			id, other, recordSize))
	}
}

// endRead stops reading for kind (logged once): Shutdown and DISCONNECT
// drain first, the rest closes.
func (c *conn) endRead(kind endKind, err error) {
	if c.state != stRunning {
		return
	}
	c.logEnd(kind, err)
	switch kind {
	case endShutdown:
		c.final = reply{hdr: wire.Reply{Op: wire.OpGoodbye}, final: true}
	case endDisconnect:
		c.final = reply{hdr: wire.Reply{Op: wire.OpDisconnect, ID: c.disconnectID}, final: true}
	default:
		c.startClosing()
		return
	}
	c.finalEnd = kind
	c.state = stDraining
	if c.rcv.Busy() {
		// A frame half-read is dropped, unanswered: it was never
		// dispatched, the client resends it.
		c.cancel(udRecv)
	}
}

// checkDrained queues the final reply once the session has nothing
// executing; it closes if the connection stopped being current.
func (c *conn) checkDrained() {
	s := c.sess
	s.mu.Lock()
	cur := s.current == c && !s.gone
	drained := s.executing == 0
	s.mu.Unlock()
	switch {
	case !cur:
		c.startClosing()
	case drained:
		c.out = append(c.out, c.final)
		c.state = stFinal
	}
}

// startClosing shuts the socket down, so that the RECV and WRITEV in
// flight complete, drops the replies not yet sent, and detaches the
// session: from now on its replies wait in the record (or go to a
// resumed connection) while this loop waits for its I/O to finish.
func (c *conn) startClosing() {
	if c.state == stClosing {
		return
	}
	c.state = stClosing
	c.srv.detach(c)
	unix.Shutdown(c.fd, unix.SHUT_RDWR) //nolint:errcheck // a socket the peer reset is fine
	if c.rcv.Busy() {
		c.cancel(udRecv)
	}
	if c.snd.Busy() {
		c.cancel(udSend)
	}
	c.snd.Abort()
	for i := range c.out {
		if op := c.out[i].op; op != nil {
			op.release(c)
		}
		c.out[i] = reply{}
	}
	c.out = c.out[:0]
	c.pings = 0
	if c.pend != nil && !c.rcv.Busy() {
		c.dropPend()
	}
}

func (c *conn) dropPend() {
	o := c.pend
	c.pend = nil
	c.inflight.Add(-1)
	o.release(c)
}

func (c *conn) onRecv(res int32) {
	direct, err := c.rcv.Complete(res, c.getSQE)
	if !c.rcv.Busy() && c.hdrPend {
		c.hdrPend = false
		c.haveHdr = direct
		direct = false
	}
	if c.state != stRunning {
		// Reading has stopped: what came is dropped, and so is a WRITE
		// whose payload was being received.
		if c.pend != nil && !c.rcv.Busy() {
			c.dropPend()
		}
		return
	}
	if err != nil {
		switch {
		case !errors.Is(err, ringio.ErrClosed):
			c.endRead(endError, err)
		case c.pend != nil || len(c.rcv.Buffered()) > 0:
			c.endRead(endError, io.ErrUnexpectedEOF)
		default:
			c.endRead(endEOF, nil)
		}
		if c.pend != nil && !c.rcv.Busy() {
			c.dropPend()
		}
		return
	}
	if direct {
		o := c.pend
		c.pend = nil
		c.openWrite(o)
	}
}

// flushOut starts one WRITEV of the queued replies (up to maxBatch) if
// none is in flight. MaxInflight counts and ping slots are given back
// here, just before the replies can reach the client.
func (c *conn) flushOut() {
	if len(c.out) == 0 || c.snd.Busy() {
		return
	}
	n := min(len(c.out), maxBatch)
	// Each reply has a slot of header and trailer (crypto.go) in hdrs;
	// a READ's trailer follows its payload in its buffer instead.
	slot := wire.ReplyHeaderSize + c.tag
	need := n * slot
	if cap(c.hdrs) < need {
		c.hdrs = make([]byte, need, need+need/2)
	}
	hdrs := c.hdrs[:need]
	iov := c.iov[:0]
	run := -1 // start in hdrs of the header run in iov[len-1], or -1
	unpushed := 0
	for i := range n {
		r := &c.out[i]
		at := i * slot
		h := hdrs[at : at+wire.ReplyHeaderSize]
		end := at + slot // a frame without payload: header ‖ trailer
		var body []byte  // a READ's payload ‖ trailer
		r.hdr.Put(h)
		if r.op != nil {
			end = at + wire.ReplyHeaderSize
			body = r.op.buf.b[:int(r.hdr.Length)+c.tag]
		}
		if c.tag > 0 {
			var err error
			if body != nil {
				err = c.sealReply(h, body[:r.hdr.Length], body[r.hdr.Length:], i)
			} else {
				err = c.sealReply(h, nil, hdrs[end-c.tag:end], i)
			}
			if err != nil { // 2^64 frames: cannot happen in practice
				c.sealWait() // workers may still hold buffers of the batch
				c.log.Warn("closing connection", zap.Error(err))
				clear(iov)
				c.iov = iov[:0]
				c.startClosing()
				return
			}
		}
		if run >= 0 {
			iov[len(iov)-1] = hdrs[run:end] // adjacent frames: one iovec
		} else {
			run = at
			iov = append(iov, hdrs[at:end])
		}
		if body != nil {
			iov = append(iov, body)
			run = -1
		}
		if c.tag > 0 && c.sealing == 0 && i < n-1 && len(body) <= pushFrameMax+c.tag {
			// Under crypto the batch is written a chunk at a time as
			// it is sealed (the last chunk by the WRITEV), so that the
			// client opens the first replies while the rest are being
			// sealed; see pushChunk.
			unpushed += end - at + len(body)
			if unpushed >= pushChunk && !c.sched.Contended(time.Now()) {
				unpushed, run = 0, -1
				c.snd.Queue(iov...)
				clear(iov)
				iov = iov[:0]
				if _, err := c.snd.Push(); err != nil {
					c.log.Info("closing connection", zap.Error(fmt.Errorf("write: %w", err)))
					c.iov = iov
					c.startClosing()
					return
				}
			}
		}
		if r.counted != nil {
			r.counted.inflight.Add(-1)
		}
		if r.ping {
			c.pings--
		}
	}
	c.flight = append(c.flight[:0], c.out[:n]...)
	rest := copy(c.out, c.out[n:])
	clear(c.out[rest:])
	c.out = c.out[:rest]
	c.sealWait()
	c.snd.Queue(iov...)
	clear(iov)
	c.iov = iov[:0]
	c.snd.Flush(c.getSQE)
}

func (c *conn) onSend(res int32) {
	done, err := c.snd.Complete(res, c.getSQE)
	c.sendGen++
	if err != nil {
		c.releaseFlight()
		if c.state < stClosing {
			if c.state == stRunning {
				c.logEnd(endError, fmt.Errorf("write: %w", err))
			} else {
				c.log.Info("connection lost while finishing", zap.Error(err))
			}
			c.startClosing()
		}
		return
	}
	if done && c.releaseFlight() {
		if c.finalEnd == endDisconnect {
			c.srv.forget(c.sess, c, "client disconnected")
		}
		c.startClosing()
	}
}

// releaseFlight gives back the buffers of the replies that were in the
// WRITEV and reports whether the final reply was among them.
func (c *conn) releaseFlight() bool {
	final := false
	for i := range c.flight {
		r := &c.flight[i]
		if r.op != nil {
			r.op.release(c)
		}
		final = final || r.final
		*r = reply{}
	}
	c.flight = c.flight[:0]
	return final
}

// onTimeout runs when the loop has had nothing to do for a quarter of
// IdleTimeout: it closes a connection that stayed silent with nothing in
// flight for IdleTimeout (so between 1 and 1.25 × IdleTimeout after its
// last request), or whose client has not taken a reply for IdleTimeout.
func (c *conn) onTimeout() {
	idle := c.srv.cfg.IdleTimeout
	now := time.Now()
	if c.snd.Busy() {
		if c.sendGen != c.lastSend || c.sendStuck.IsZero() {
			c.lastSend, c.sendStuck = c.sendGen, now
		} else if now.Sub(c.sendStuck) >= idle {
			err := fmt.Errorf("write: the client took no reply for %v", idle)
			if c.state == stRunning {
				c.logEnd(endError, err)
			} else {
				c.log.Info("connection lost while finishing", zap.Error(err))
			}
			c.startClosing()
			return
		}
	} else {
		c.sendStuck = time.Time{}
	}
	if c.state != stRunning {
		return
	}
	if c.reqCount != c.lastCount || c.inflight.Load() > 0 || c.sessionBusy() {
		c.lastCount = c.reqCount
		c.silentSince = now
	}
	if now.Sub(c.silentSince) >= idle {
		c.endRead(endIdle, nil)
	}
}

// sqe returns a free SQE, submitting what is prepared when the SQ is full.
func (c *conn) sqe() *uring.SQE {
	for {
		if s := c.ring.GetSQE(); s != nil {
			return s
		}
		if _, err := c.ring.Submit(); err != nil {
			// Only a broken ring fails here.
			panic(fmt.Sprintf("export: conn %d: ring submit failed with a full SQ: %v", c.id, err))
		}
	}
}

func (c *conn) armWake() {
	s := c.getSQE()
	s.PrepReadEventfd(c.x.efd, c.efdVal)
	s.SetUserData(udWake)
	c.wakeArmed = true
}

func (c *conn) cancel(target uint64) {
	s := c.getSQE()
	s.PrepCancel(target)
	s.SetUserData(udCancel)
	c.cancels++
}

// teardown closes everything once the loop is quiet.
func (c *conn) teardown() {
	c.sched.Close()
	unix.Close(c.fd)
	c.fd = -1
	c.ring.Close()
	c.ring = nil
	for _, ev := range c.x.close() {
		if ev.kind == evReply && ev.r.op != nil {
			ev.r.op.release(c)
		}
	}
	if c.syncQ != nil {
		close(c.syncQ)
		c.syncWG.Wait()
	}
	if c.br != nil {
		c.finishBridge()
	}
}

// leaked keeps what a broken ring may still write into referenced forever.
var leaked struct {
	mu    sync.Mutex
	conns []*conn
}

func (c *conn) leak() {
	unix.Shutdown(c.fd, unix.SHUT_RDWR) //nolint:errcheck
	c.x.close()
	leaked.mu.Lock()
	leaked.conns = append(leaked.conns, c)
	leaked.mu.Unlock()
	if c.br != nil {
		c.finishBridge()
	}
}
