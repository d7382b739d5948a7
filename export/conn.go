package export

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/ringio"
	"github.com/dst-dev/dst/internal/sched"
	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
)

// A connection is one goroutine, locked to its OS thread from accept to
// close. It does the handshake with blocking reads and writes on the
// net.Conn, then takes the socket out of Go's poller (ringio.DetachFd) and
// runs the loop (loop.go): one io_uring ring on which it receives
// requests, executes their I/O on the export's file and sends the replies,
// with one io_uring_enter per batch. Other goroutines reach it only
// through its cross-thread queue (xqueue: replies of its session produced
// on another connection's loop after a resume, results of synchronous
// backend fallbacks, and kicks for shutdown, abort and the test hold),
// whose eventfd read stays armed on the ring.
//
// A conn without a socket descriptor (the in-process mem transport, a
// wrapped net.Conn) is bridged: the loop gets one end of a Unix socketpair
// and two goroutines copy between the other end and the net.Conn
// (bridge.go). The loop is the same for every transport.

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

	// Set by the handshake, then read-only.
	sess        *session
	exp         *export
	features    wire.Features
	readOnly    bool
	maxInflight int64
	maxTransfer uint32
	// welcomeToken: with a keyed suite, the token the WELCOME announced
	// before the session is attached (after FINISHED); a new session
	// takes it (newSessionToken).
	welcomeToken wire.Token

	inflight   atomic.Int64 // transactions admitted here and not yet answered
	bufBytes   atomic.Int64 // buffer bytes charged to this connection
	budgetWait atomic.Bool  // the loop waits for buffer budget

	x xqueue // cross-thread events for the loop

	killOnce sync.Once
	kill     chan struct{} // closed by abort
	killed   atomic.Bool   // set by abort, before kill is closed
	killWhy  string        // set once by abort, before killed

	stopFlag atomic.Bool // Shutdown: stop reading (the loop's copy of stopping)
	dlMu     sync.Mutex
	phase    int
	stopping bool

	// Everything below belongs to the connection's goroutine (the loop).
	ring   *uring.Ring
	getSQE ringio.GetSQE
	fd     int // the socket (or the loop's end of the bridge), -1 if none
	br     *bridge
	rcv    *ringio.Receiver
	snd    *ringio.Sender
	cqes   []uring.CQE
	efdVal *uint64 // the armed eventfd read writes here

	state    loopState
	final    reply // GOODBYE or the DISCONNECT echo, sent once drained
	finalEnd endKind
	out      []reply  // replies queued, not yet in flight
	flight   []reply  // replies in the WRITEV in flight
	hdrs     []byte   // reply headers of the flight
	iov      [][]byte // scratch: the flight's slices
	xbatch   []xevent // scratch: events taken from x
	pend     *op      // a WRITE whose payload is being received directly
	hdr      [wire.RequestHeaderSize]byte
	hdrPend  bool // a request header is being received directly into hdr
	haveHdr  bool // hdr holds the next request header
	bigWrite bool // the last request was a WRITE larger than directMin
	pings    int  // ping replies not yet handed to the sender
	blocked  bool // parsing waits for buffers or for the sender

	slots     slotTable[*op] // ops with an SQE in flight, by slot (user data)
	parked    []*op          // ops held by the test hook (Server.Hold)
	ops       int            // ops read here and not finished (ring, inline, helper, parked)
	cancels   int            // ASYNC_CANCEL SQEs in flight
	wakeArmed bool           // the eventfd read is in flight
	wakeStop  bool           // the eventfd read was cancelled: do not re-arm

	syncQ    chan *op // to the sync helpers
	helpers  int
	syncBusy int
	syncWG   sync.WaitGroup

	// Idle tracking.
	reqCount, lastCount uint64
	silentSince         time.Time
	sendGen, lastSend   uint64
	sendStuck           time.Time
	disconnectID        uint64

	// Frame protection (crypto.go), from the handshake on.
	cs      *crypto.Session
	tag     int                          // trailer size, 0 without crypto
	rframe  crypto.Frame                 // the request frame being opened
	pframe  crypto.Frame                 // the WRITE frame whose payload is being received
	pendHdr [wire.RequestHeaderSize]byte // and its header
	// Replies sealed by Config.CryptoPool (crypto.go).
	poolInline int
	sealQ      *crypto.Queue
	sealJobs   []crypto.Job
	sealing    int
	// whether writing a batch of replies in chunks can overlap (loop.go,
	// pushChunk); used on the loop's thread only
	sched sched.Monitor
}

func newConn(s *Server, nc net.Conn, p peer) *conn {
	id := s.connSeq.Add(1)
	c := &conn{
		srv:  s,
		nc:   nc,
		id:   id,
		peer: p,
		log:  s.log.With(zap.Uint64("conn", id), zap.String("peer", p.desc)),
		kill: make(chan struct{}),
		fd:   -1,
	}
	c.x.efd = -1
	return c
}

// abort closes the connection at once: the loop stops reading and
// writing, and closes it once its I/O has completed. It is idempotent and
// may be called from any goroutine; why (for logs) is kept from the first
// call.
func (c *conn) abort(why string) {
	c.killOnce.Do(func() {
		c.killWhy = why
		c.killed.Store(true)
		close(c.kill)
		// During the handshake this ends a blocked read or write; after it
		// the net.Conn is closed already (DetachFd) or bridged, and
		// closing it ends the bridge's copies.
		c.nc.Close()
		c.x.kick()
	})
}

// stopReading is Shutdown's request: a running connection stops reading
// at once (a frame half-read is dropped, unanswered), finishes what it has
// in flight and says GOODBYE; a connection still in its handshake gets
// shutdownGrace to send its HELLO, and BUSY.
func (c *conn) stopReading() {
	c.dlMu.Lock()
	c.stopping = true
	c.stopFlag.Store(true)
	if c.phase == phaseHandshake {
		_ = c.nc.SetReadDeadline(time.Now().Add(shutdownGrace))
	}
	c.dlMu.Unlock()
	c.x.kick()
}

func (c *conn) isStopping() bool {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.stopping
}

// How reading ended.
type endKind int

const (
	endEOF        endKind = iota // the client closed
	endError                     // a read or write error
	endFraming                   // a framing error or protocol violation
	endIdle                      // IdleTimeout
	endShutdown                  // Shutdown
	endFenced                    // the session moved to another connection
	endDisconnect                // DISCONNECT
	endAborted                   // abort (see killWhy)
)

// serve runs a connection from accept to close. Once the handshake has
// read a valid HELLO from a peer on the access list, the goroutine locks
// itself to its OS thread (the ring is bound to it) and never unlocks:
// the thread ends with the goroutine. So an established connection costs
// a thread, as with nbd-server, but a peer that never completes a
// handshake does not (Go allows 10000 threads by default).
func (c *conn) serve() {
	s := c.srv
	defer s.wg.Done()
	defer s.unregister(c)
	defer s.detach(c)
	if !c.handshake() {
		c.abort("handshake ended")
		c.closeRing()
		return
	}
	c.run()
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

func (c *conn) sessionBusy() bool {
	s := c.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current == c && s.executing > 0
}

// fits reports whether a buffer of n bytes may be charged to the
// connection now (MaxBufferBytes); a single request larger than the limit
// is served when the connection holds nothing.
func (c *conn) fits(n int64) bool {
	cur := c.bufBytes.Load()
	return cur == 0 || cur+n <= c.srv.cfg.MaxBufferBytes
}

// releaseBuffer gives n bytes of buffer budget back. on is the connection
// whose loop runs the release: any other goroutine wakes c's loop if it
// waits for buffers.
func (c *conn) releaseBuffer(n int, on *conn) {
	c.bufBytes.Add(-int64(n))
	if on != c && c.budgetWait.Load() {
		c.x.kick()
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

func (c *conn) String() string { return fmt.Sprintf("conn %d", c.id) }
