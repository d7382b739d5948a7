package export

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/wire"
)

// A connection's pipeline
//
//	serial   reader (one goroutine): header → ParseRequest → buffer from
//	         the pool (waits while the connection holds MaxBufferBytes) →
//	         WRITE payload read into it → dispatch under the session lock
//	         (record rules, request checks, Worker.Submit, which never
//	         blocks). PINGs and immediate answers go to the reply queue.
//	parallel Worker goroutines (one per export, io_uring): execute, then
//	         Done records the result and queues the reply on the session's
//	         current connection.
//	serial   writer (one goroutine): takes every queued reply at once,
//	         one writev of headers and READ payloads, gives buffers back.
//
// Handoffs never block the reader on the disk or on the writer: the reply
// queue is a locked slice bounded by admission (MaxInflight), Submit is
// bounded by the executor, and the only waits are the buffer budget
// (backpressure: the reader stops reading) and the ping budget.

const readBufferSize = 64 << 10

// connection phases (guarded by dlMu)
const (
	phaseHandshake = iota
	phaseRunning
)

type conn struct {
	srv  *Server
	nc   net.Conn
	id   uint64
	peer peer
	log  *zap.Logger
	br   *bufio.Reader
	hdr  [wire.RequestHeaderSize]byte

	// Set by the handshake, then read-only.
	sess        *session
	exp         *export
	ex          *executor
	ownEx       bool // ex belongs to this connection (workerPerConn)
	features    wire.Features
	readOnly    bool
	maxInflight int64
	maxTransfer uint32

	inflight   atomic.Int64 // transactions admitted here and not yet answered
	bufBytes   atomic.Int64 // buffer bytes charged to this connection
	budgetWait atomic.Bool
	budgetCh   chan struct{}
	pingSem    chan struct{}

	q     replyQueue
	wdone chan struct{} // closed when the writer has exited
	// Writer state.
	hdrs []byte
	bufs [][]byte
	iov  net.Buffers

	killOnce sync.Once
	kill     chan struct{} // closed by abort
	killWhy  string        // set once by abort, before kill is closed

	dlMu     sync.Mutex
	phase    int
	stopping bool // Shutdown: stop reading

	// Reader-only idle tracking.
	reqCount, lastCount uint64
	silentSince         time.Time
	disconnectID        uint64
}

func newConn(s *Server, nc net.Conn, p peer) *conn {
	id := s.connSeq.Add(1)
	return &conn{
		srv:      s,
		nc:       nc,
		id:       id,
		peer:     p,
		log:      s.log.With(zap.Uint64("conn", id), zap.String("peer", p.desc)),
		budgetCh: make(chan struct{}, 1),
		pingSem:  make(chan struct{}, maxPendingPings),
		q:        replyQueue{wake: make(chan struct{}, 1)},
		wdone:    make(chan struct{}),
		kill:     make(chan struct{}),
	}
}

// abort closes the connection at once: the reader and writer return, and
// everything waiting on kill gives up. It is idempotent; why (for logs)
// is kept from the first call.
func (c *conn) abort(why string) {
	c.killOnce.Do(func() {
		c.killWhy = why
		c.nc.Close()
		close(c.kill)
	})
}

func (c *conn) abortf(format string, args ...any) { c.abort(fmt.Sprintf(format, args...)) }

// armRead sets the read deadline, or a past one once Shutdown has asked
// the connection to stop reading (so that a late re-arm cannot undo it).
func (c *conn) armRead(t time.Time) {
	c.dlMu.Lock()
	if c.stopping {
		t = time.Unix(1, 0)
	}
	_ = c.nc.SetReadDeadline(t)
	c.dlMu.Unlock()
}

// stopReading is Shutdown's request: a running connection's reader stops at
// once (the frame it is reading is dropped, unanswered); a connection still
// in its handshake gets shutdownGrace to send its HELLO, and BUSY.
func (c *conn) stopReading() {
	c.dlMu.Lock()
	c.stopping = true
	if c.phase == phaseRunning {
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	} else {
		_ = c.nc.SetReadDeadline(time.Now().Add(shutdownGrace))
	}
	c.dlMu.Unlock()
}

func (c *conn) isStopping() bool {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.stopping
}

// How a reader ended.
type endKind int

const (
	endEOF        endKind = iota // the client closed
	endError                     // a read error
	endFraming                   // a framing error or protocol violation
	endIdle                      // IdleTimeout
	endShutdown                  // Shutdown
	endFenced                    // the session moved to another connection
	endDisconnect                // DISCONNECT
	endAborted                   // abort (see killWhy)
)

var (
	errStopping = errors.New("exporter shutting down")
	errIdle     = errors.New("idle")
)

// serve runs a connection from accept to close. It owns the writer
// goroutine and waits for it.
func (c *conn) serve() {
	s := c.srv
	defer s.wg.Done()
	defer s.unregister(c)
	writer := false
	defer func() {
		c.abort("connection ended")
		if writer {
			<-c.wdone
		} else {
			c.drainQueue()
		}
		s.detach(c)
		if c.ownEx {
			if err := c.ex.close(); err != nil {
				c.log.Warn("worker", zap.Error(err))
			}
		}
	}()
	if !c.handshake() {
		return
	}
	writer = true
	go c.writeLoop()
	kind, err := c.readLoop()
	c.logEnd(kind, err)
	switch kind {
	case endDisconnect:
		// §5.7: finish what is in flight, echo DISCONNECT, forget.
		if c.sess.waitDrained(c) && c.finish(reply{hdr: wire.Reply{Op: wire.OpDisconnect, ID: c.disconnectID}, final: true}) {
			s.forget(c.sess, c, "client disconnected")
		}
	case endShutdown:
		// §4 GOODBYE: finish or fail what was accepted, send the
		// replies, then GOODBYE.
		if c.sess.waitDrained(c) {
			c.finish(reply{hdr: wire.Reply{Op: wire.OpGoodbye}, final: true})
		}
	}
}

// finish queues the final reply and waits until the writer has sent it. It
// returns false if the connection broke first.
func (c *conn) finish(r reply) bool {
	if !c.q.push(r) {
		return false
	}
	select {
	case <-c.wdone:
		select {
		case <-c.kill:
			return false // the writer failed
		default:
			return true
		}
	case <-c.kill:
		return false
	}
}

func (c *conn) logEnd(kind endKind, err error) {
	switch kind {
	case endEOF:
		c.log.Info("connection closed by the client")
	case endError:
		c.log.Info("connection lost", zap.Error(err))
	case endFraming:
		c.log.Warn("closing connection: protocol error", zap.Error(err))
	case endIdle:
		c.log.Info("closing idle connection", zap.Duration("idle", c.srv.cfg.IdleTimeout))
	case endShutdown:
		c.log.Info("connection stops reading: exporter shutting down")
	case endFenced:
		c.log.Info("connection replaced: the session was resumed on another connection")
	case endDisconnect:
		c.log.Info("client disconnects")
	case endAborted:
		c.log.Info("connection closed", zap.String("why", c.killWhy))
	}
}

// readLoop is the reader: it reads requests until the connection ends.
func (c *conn) readLoop() (endKind, error) {
	c.silentSince = time.Now()
	c.armRead(c.idleDeadline(c.silentSince))
	for {
		if err := c.readFull(c.hdr[:], true); err != nil {
			return c.readEnd(err)
		}
		c.reqCount++
		req, err := wire.ParseRequest(c.hdr[:], c.maxTransfer)
		if err != nil {
			return endFraming, err
		}
		switch req.Op {
		case wire.OpPing:
			// Answered at once, ahead of queued I/O (§4).
			select {
			case c.pingSem <- struct{}{}:
			default:
				select {
				case c.pingSem <- struct{}{}:
				case <-c.kill:
					return endAborted, nil
				}
			}
			if !c.q.push(reply{hdr: wire.Reply{Op: wire.OpPing, ID: req.ID}, ping: true}) {
				<-c.pingSem
			}
			continue
		case wire.OpDisconnect:
			c.disconnectID = req.ID
			return endDisconnect, nil
		}
		if c.inflight.Load() >= c.maxInflight {
			return endFraming, fmt.Errorf("more than %d requests outstanding (MAX_INFLIGHT)", c.maxInflight)
		}
		c.inflight.Add(1)
		o := getOp(c.srv)
		o.origin = c
		o.id, o.wop, o.flags = req.ID, req.Op, req.Flags
		o.off, o.length, o.reqFloor = req.Offset, req.Length, req.Floor
		if req.Op == wire.OpRead || req.Op == wire.OpWrite {
			if !c.takeBuffer(o) {
				o.release()
				return endAborted, nil
			}
			if req.Op == wire.OpWrite {
				// Always read the whole payload, even for a request
				// that will be refused: the stream stays in sync.
				if err := c.readFull(o.buf.b[:req.Length], false); err != nil {
					o.release()
					return c.readEnd(err)
				}
			}
		}
		switch res, other := c.sess.dispatch(c, o); res {
		case fenced:
			return endFenced, nil
		case collision:
			return endFraming, fmt.Errorf("id %d would evict id %d, which is still executing: more than %d transactions outstanding in the session",
				req.ID, other, recordSize)
		}
	}
}

// readEnd classifies a read error.
func (c *conn) readEnd(err error) (endKind, error) {
	select {
	case <-c.kill:
		return endAborted, nil
	default:
	}
	switch {
	case errors.Is(err, errStopping):
		return endShutdown, nil
	case errors.Is(err, errIdle):
		return endIdle, nil
	case err == io.EOF:
		return endEOF, nil
	}
	return endError, err
}

// readFull reads exactly len(p) bytes. atFrame says p starts a frame, so
// that an EOF before its first byte is a clean close (io.EOF) and one after
// is io.ErrUnexpectedEOF. Deadline expiries are the idle check and the
// shutdown signal: the read goes on unless the connection is idle or
// stopping.
func (c *conn) readFull(p []byte, atFrame bool) error {
	started := !atFrame
	for len(p) > 0 {
		n, err := c.br.Read(p)
		p = p[n:]
		started = started || n > 0
		if err == nil || len(p) == 0 {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if terr := c.onTimeout(); terr != nil {
				return terr
			}
			continue
		}
		if err == io.EOF && started {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// onTimeout decides, at a read deadline, whether the reader goes on.
func (c *conn) onTimeout() error {
	if c.isStopping() {
		return errStopping
	}
	now := time.Now()
	if c.reqCount != c.lastCount || c.inflight.Load() > 0 || c.sessionBusy() {
		c.lastCount = c.reqCount
		c.silentSince = now
	}
	if idle := c.srv.cfg.IdleTimeout; idle > 0 && now.Sub(c.silentSince) >= idle {
		return errIdle
	}
	c.armRead(c.idleDeadline(now))
	return nil
}

// idleDeadline is the next read deadline: a quarter of IdleTimeout from
// now, so that an idle connection is closed between IdleTimeout and 1.25×
// after its last request; none when IdleTimeout is off.
func (c *conn) idleDeadline(now time.Time) time.Time {
	idle := c.srv.cfg.IdleTimeout
	if idle <= 0 {
		return time.Time{}
	}
	return now.Add(max(idle/4, time.Millisecond))
}

func (c *conn) sessionBusy() bool {
	s := c.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current == c && s.executing > 0
}

// takeBuffer charges a buffer for o to the connection, waiting while the
// connection holds MaxBufferBytes (backpressure), and gives it to o. It
// returns false if the connection was aborted while waiting.
func (c *conn) takeBuffer(o *op) bool {
	n := int64(1) << (class(int(o.length)) + minBufShift)
	limit := c.srv.cfg.MaxBufferBytes
	fits := func() bool { cur := c.bufBytes.Load(); return cur == 0 || cur+n <= limit }
	for !fits() {
		c.budgetWait.Store(true)
		if fits() {
			c.budgetWait.Store(false)
			break
		}
		select {
		case <-c.budgetCh:
		case <-c.kill:
			c.budgetWait.Store(false)
			return false
		}
		c.budgetWait.Store(false)
	}
	c.bufBytes.Add(n)
	o.buf = c.srv.bufs.get(int(o.length))
	return true
}

// releaseBuffer gives n bytes of buffer budget back (from any goroutine).
func (c *conn) releaseBuffer(n int) {
	c.bufBytes.Add(-int64(n))
	if c.budgetWait.Load() {
		select {
		case c.budgetCh <- struct{}{}:
		default:
		}
	}
}

// check applies the request checks of §5.2 to a new transaction of this
// connection (called under the session lock, cheap and without syscalls):
// op or flag not in effect (EOPNOTSUPP), write to a read-only export
// (EROFS) or session (EPERM), range and alignment (backend Check: EINVAL,
// or ENOSPC for a write past the end).
func (c *conn) check(o *op) wire.Status {
	var need wire.Features
	switch o.wop {
	case wire.OpFlush:
		need = wire.FeatFlush
	case wire.OpDiscard:
		need = wire.FeatDiscard
	case wire.OpWriteZeroes:
		need = wire.FeatWriteZeroes
	case wire.OpWrite:
		if o.flags&wire.FlagFUA != 0 {
			need = wire.FeatFUA
		}
	}
	if c.features&need != need {
		return wire.StatusEOPNOTSUPP
	}
	switch o.wop {
	case wire.OpWrite, wire.OpDiscard, wire.OpWriteZeroes:
		if c.exp.cfg.ReadOnly {
			return wire.StatusEROFS
		}
		if c.readOnly {
			return wire.StatusEPERM
		}
	}
	// Check's errnos are those of PROTOCOL.md §5.2: EINVAL for a
	// misaligned or overflowing range and a read past the end, ENOSPC for
	// a write (discard, write-zeroes) past the end.
	return wire.StatusOf(c.exp.file.Check(backendOp(o.wop), backendFlags(o.flags), o.off, o.length))
}
