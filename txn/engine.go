package txn

// The Engine is the transaction state machine, after etcd raft's RawNode:
// it holds no goroutines, sockets or clock and is not safe for concurrent
// use. Inputs are Submit (a block request), Receiving and Step (a reply),
// Tick (time) and the connection events ConnUp, ConnDown and DialFailed.
// Outputs are read with Ready (frames to send, whether to dial or drop the
// connection) and TakeCompletions (results for the block layer); the driver
// does that work and then calls Advance.
//
// Connection states:
//
//	          tick >= retryAt           ConnUp
//	  down ──────────────────> dialing ────────> up
//	   ^  <──── DialFailed ───────┘               │
//	   └───── ConnDown (after Ready.CloseConn, a read/write error, GOODBYE)
//
// Transactions:
//
//	Submit ─> pending ─(Ready.Send, Advance)─> sent ─(Step: reply)─> completed
//	             ^                               │
//	             └─── timeout (resend, same id) ─┤
//	             └─── ConnDown (all resent in id order after ConnUp)
//
// Every timeout uses up one attempt, sent or not; after Retries+1 timeouts
// the request completes with EIO, so failure comes after at most
// Timeout × (Retries+1) ticks.
//
// A transaction handed out in Ready.Send does not complete before Advance,
// and one whose READ payload is being read (Receiving) does not complete
// before its Step: a buffer goes back to the block layer only when no
// network code reads or writes it any more.

import (
	"syscall"

	"github.com/dst-dev/dst/internal/wire"
)

// Config sets the engine's limits and timers. Durations are in ticks.
type Config struct {
	// Capacity bounds the transactions in the table; size it above the
	// number of requests the block layer can have in flight (queues ×
	// depth), so that Submit never finds it full.
	Capacity int
	// Timeout: ticks without a reply before a transaction is resent.
	Timeout uint64
	// Retries: attempts after the first; then the request fails with EIO.
	Retries int
	// Ping: a ping is sent after this many ticks without any frame from the
	// exporter; the connection is declared dead if nothing arrives within
	// Ping more ticks.
	Ping uint64
	// BackoffMin/BackoffMax bound the delay between connection attempts;
	// it doubles after each failure.
	BackoffMin, BackoffMax uint64
	// FirstID: transaction ids start at FirstID+1 (default 0: at 1). A
	// daemon that takes a device over from a dead one (dst recover)
	// resumes sessions whose records still hold the dead daemon's ids;
	// §5.1 forbids reusing any of them, so the new engine starts above
	// every id the old one could have used: EpochFirstID.
	FirstID uint64
	// NoSession: the server keeps no record of the ids it executed (an
	// NBD server), so a transaction is never resent on the connection it
	// was sent on: a timeout closes the connection instead, and what is
	// unanswered is resent on the next one. A transaction whose retries
	// are used up while it is out on the connection also closes it: its
	// reply may still come, and without a record of it the reader could
	// not tell how long it is.
	NoSession bool
}

// Recovery epochs. A device's state record counts the daemons that have
// served it (the epoch, bumped and written to disk before a recovering
// daemon sends anything); the daemon of epoch e numbers its transactions
// from e<<EpochShift + 1. Each epoch has 2^48 ids (nine years at a
// million requests per second on one queue), and bit 63 stays free for
// ping ids (PingBit), so MaxEpoch is 2^15-1. The exporter's record is
// indexed by id modulo its size and compares whole ids, so the high bits
// cost nothing there, and nothing has to be written while serving.
const (
	EpochShift = 48
	MaxEpoch   = 1<<(63-EpochShift) - 1
)

// EpochFirstID is the Config.FirstID of a daemon of the given epoch.
func EpochFirstID(epoch uint16) uint64 {
	return uint64(min(epoch, MaxEpoch)) << EpochShift
}

// ConnState is the engine's view of the connection.
type ConnState uint8

const (
	Down ConnState = iota
	Dialing
	Up
	Closed
)

func (s ConnState) String() string {
	switch s {
	case Down:
		return "down"
	case Dialing:
		return "connecting"
	case Up:
		return "up"
	}
	return "closed"
}

// Completion is the result of one transaction.
type Completion struct {
	Handle Handle
	Err    syscall.Errno // 0 = success
}

// Ready is the work the driver must do, then call Advance.
type Ready struct {
	// Send: frames to write on the current connection, in this order: each
	// Txn.Header, followed by Txn.Buf for a WRITE.
	Send []*Txn
	// Ping: write a PING with PingID.
	Ping   bool
	PingID uint64
	// Dial: start a connection attempt; report ConnUp or DialFailed.
	Dial bool
	// CloseConn: the current connection is dead; close it and report
	// ConnDown once its reader has stopped.
	CloseConn bool
	// Disconnect: Detach was asked and nothing is in flight: send
	// DISCONNECT, then close.
	Disconnect bool
}

func (r *Ready) empty() bool {
	return len(r.Send) == 0 && !r.Ping && !r.Dial && !r.CloseConn && !r.Disconnect
}

// Stats are counters for metrics and tests.
type Stats struct {
	Submitted, Completed, Failed uint64
	Resent, Timeouts, Reconnects uint64
	PingsSent                    uint64
	// Corrupt counts reply frames whose trailer did not verify (PROTOCOL.md
	// §8.5): lost, their transactions resent.
	Corrupt uint64
}

// Engine is the transaction state machine.
type Engine struct {
	cfg     Config
	tab     *table
	pending fifo // waiting to be (re)sent, oldest first
	done    []Completion

	now         uint64
	conn        ConnState
	gen         uint64 // bumps on every ConnUp
	maxInflight int    // the exporter's limit on this connection
	sent        int    // transactions in state stSent
	lastRecv    uint64
	pingID      uint64 // outstanding ping, 0 if none
	pingSeq     uint64
	pingAt      uint64
	pingDue     bool // a ping is to be sent
	backoff     uint64
	retryAt     uint64
	closeConn   bool
	detach      bool
	detached    bool // the exporter echoed DISCONNECT
	fatal       syscall.Errno

	rd      Ready
	inReady bool
	stats   Stats
}

// PingBit marks ping ids; they share nothing with transaction ids.
const PingBit = 1 << 63

// New returns an engine in state Down that asks to dial at once.
func New(cfg Config) *Engine {
	cfg.Capacity = max(cfg.Capacity, 1)
	cfg.Timeout = max(cfg.Timeout, 1)
	cfg.Ping = max(cfg.Ping, 1)
	cfg.BackoffMin = max(cfg.BackoffMin, 1)
	cfg.BackoffMax = max(cfg.BackoffMax, cfg.BackoffMin)
	tab := newTable(cfg.Capacity)
	tab.next, tab.floor = cfg.FirstID+1, cfg.FirstID+1
	return &Engine{
		cfg:     cfg,
		tab:     tab,
		pending: newFifo(2 * len(tab.slots)),
		done:    make([]Completion, 0, len(tab.slots)),
		rd:      Ready{Send: make([]*Txn, 0, len(tab.slots))},
		backoff: cfg.BackoffMin,
	}
}

// State returns the connection state.
func (e *Engine) State() ConnState { return e.conn }

// Stats returns the counters.
func (e *Engine) Stats() Stats { return e.stats }

// Inflight returns the number of transactions not yet completed.
func (e *Engine) Inflight() int { return e.tab.used }

// Floor returns the lowest id not yet completed (the protocol's floor).
func (e *Engine) Floor() uint64 { return e.tab.floor }

// Now returns the current tick.
func (e *Engine) Now() uint64 { return e.now }

// Detached reports that the exporter acknowledged DISCONNECT.
func (e *Engine) Detached() bool { return e.detached }

// Submit accepts a new request. It returns false only when the table is
// full, which a correctly sized engine never is; the caller then fails the
// request itself.
func (e *Engine) Submit(h Handle, op wire.Op, flags wire.Flags, off uint64, length uint32, buf []byte) bool {
	if e.fatal != 0 || e.conn == Closed {
		e.done = append(e.done, Completion{Handle: h, Err: e.failErrno()})
		e.stats.Failed++
		return true
	}
	x := e.tab.alloc()
	if x == nil {
		return false
	}
	x.Op, x.Flags, x.Offset, x.Length, x.Buf, x.Handle = op, flags, off, length, buf, h
	// The clock starts at submission: time spent waiting for a connection
	// counts against the request's attempts.
	x.deadline = e.now + e.cfg.Timeout
	e.pending.push(x)
	e.stats.Submitted++
	return true
}

func (e *Engine) failErrno() syscall.Errno {
	if e.fatal != 0 {
		return e.fatal
	}
	return syscall.EIO
}

// Receiving is called by the reader when the header of a successful READ
// reply arrived: it returns the buffer for the payload and marks the
// transaction so it cannot complete while the payload is read; nil when
// the id is not a READ in flight with that length (the payload is then
// discarded, and the reply ignored).
func (e *Engine) Receiving(id uint64, length uint32) []byte {
	x := e.tab.get(id)
	if x == nil || x.Op != wire.OpRead || x.Length != length || x.recv {
		return nil
	}
	x.recv = true
	return x.Buf
}

// Lost reports a reply frame that did not verify (PROTOCOL.md §8.5): it is
// counted, and if receiving is set the Receiving of id is undone, so that
// the transaction waits for a resend. Nothing else of the frame is used
// (not even as a sign of life).
func (e *Engine) Lost(id uint64, receiving bool) {
	e.stats.Corrupt++
	if !receiving {
		return
	}
	if x := e.tab.get(id); x != nil {
		x.recv = false
	}
}

// Step applies a reply read from the current connection.
func (e *Engine) Step(r wire.Reply) {
	e.lastRecv = e.now
	switch r.Op {
	case wire.OpPing:
		if r.ID == e.pingID {
			e.pingID = 0
		}
		return
	case wire.OpGoodbye:
		e.connLost()
		return
	case wire.OpDisconnect:
		e.detached = true
		return
	}
	x := e.tab.get(r.ID)
	if x == nil {
		return // a late duplicate of something already completed
	}
	if x.Op != r.Op {
		// The exporter answered another op for this id: it is broken, and
		// nothing on this connection can be trusted.
		x.recv = false
		e.connLost()
		return
	}
	if x.Op == wire.OpRead && r.Status == 0 && !x.recv {
		return // payload was discarded (see Receiving): wait for a resend
	}
	x.recv = false
	e.finish(x, r.Status)
}

// finish completes x with status, or defers it while x is being sent.
func (e *Engine) finish(x *Txn, st wire.Status) {
	if x.inSend {
		x.deferred, x.result = true, st
		return
	}
	if x.state == stSent {
		e.sent--
	}
	var errno syscall.Errno
	if st != 0 {
		errno = syscall.Errno(st)
		if st == wire.Status(syscall.ESTALE) {
			errno = syscall.EIO // the exporter could not vouch for it
		}
		e.stats.Failed++
	}
	e.done = append(e.done, Completion{Handle: x.Handle, Err: errno})
	e.stats.Completed++
	e.tab.free(x)
}

// TakeCompletions appends the completions gathered so far to dst and
// forgets them.
func (e *Engine) TakeCompletions(dst []Completion) []Completion {
	dst = append(dst, e.done...)
	e.done = e.done[:0]
	return dst
}

// Tick advances the clock by one tick. Tick, ConnUp, ConnDown and
// DialFailed must not be called between Ready and Advance.
func (e *Engine) Tick() {
	e.mustNotBeInReady("Tick")
	e.now++
	if e.fatal != 0 || e.conn == Closed {
		return
	}
	e.checkTimeouts()
	if e.conn == Up && !e.closeConn {
		switch {
		case e.pingID != 0 && e.now-e.pingAt >= e.cfg.Ping:
			e.connLost() // silent for two ping intervals: dead
		case e.pingID == 0 && e.now-e.lastRecv >= e.cfg.Ping:
			e.pingSeq++
			e.pingID = PingBit | e.pingSeq
			e.pingAt = e.now
			e.pingDue = true
		}
	}
}

func (e *Engine) checkTimeouts() {
	for i := range e.tab.slots {
		x := &e.tab.slots[i]
		if x.state == stFree || e.now < x.deadline || x.inSend {
			continue
		}
		e.stats.Timeouts++
		x.tries++
		x.deadline = e.now + e.cfg.Timeout
		if x.recv {
			// Its payload is arriving: the attempt counts, but the buffer
			// cannot be released until the reader is done with it.
			continue
		}
		if e.cfg.NoSession && x.state == stSent {
			e.connLost()
		}
		if x.tries > e.cfg.Retries {
			e.finish(x, wire.Status(syscall.EIO))
			continue
		}
		if x.state == stSent && !e.cfg.NoSession {
			// Resend on the current connection: the exporter either runs it
			// (the first copy was lost) or knows the id and answers once. A
			// silent connection is caught by the ping.
			x.state = stPending
			e.sent--
			e.pending.push(x)
			e.stats.Resent++
		}
	}
}

// ConnUp reports a new connection after a successful handshake.
// maxInflight is the exporter's limit on it.
func (e *Engine) ConnUp(maxInflight int) {
	e.mustNotBeInReady("ConnUp")
	if e.conn == Closed {
		return
	}
	if e.gen > 0 {
		e.stats.Reconnects++
	}
	e.conn = Up
	e.gen++
	e.maxInflight = max(maxInflight, 1)
	e.lastRecv = e.now
	e.pingID, e.pingDue = 0, false
	e.closeConn = false
	e.backoff = e.cfg.BackoffMin
	e.requeueAll()
}

// requeueAll rebuilds the pending queue from the table, in id order:
// everything not answered is sent (again) on the new connection.
func (e *Engine) requeueAll() {
	e.pending.clear()
	e.sent = 0
	for id := e.tab.floor; id < e.tab.next; id++ {
		x := e.tab.get(id)
		if x == nil {
			continue
		}
		if x.state == stSent {
			e.stats.Resent++
		}
		x.state = stPending
		e.pending.push(x)
	}
}

// ConnDown reports that the connection is gone (read or write error, or
// the close asked by Ready.CloseConn). Its reader must have stopped: no
// Receiving is still in progress.
func (e *Engine) ConnDown() {
	e.mustNotBeInReady("ConnDown")
	if e.conn == Closed || e.conn == Down {
		return
	}
	for i := range e.tab.slots {
		e.tab.slots[i].recv = false
	}
	e.conn = Down
	e.closeConn = false
	e.pingID, e.pingDue = 0, false
	e.retryAt = e.now + e.backoff
	e.backoff = min(e.backoff*2, e.cfg.BackoffMax)
	e.requeueAll()
}

// DialFailed reports a failed connection attempt.
func (e *Engine) DialFailed() {
	if e.conn == Dialing {
		e.conn = Down
		e.retryAt = e.now + e.backoff
		e.backoff = min(e.backoff*2, e.cfg.BackoffMax)
	}
}

func (e *Engine) connLost() {
	if e.conn == Up {
		e.closeConn = true
	}
}

// Fail makes every current and future request fail with errno: a
// permanent error, such as an export that changed size.
func (e *Engine) Fail(errno syscall.Errno) {
	e.fatal = errno
	for i := range e.tab.slots {
		if x := &e.tab.slots[i]; x.state != stFree && !x.recv {
			e.finish(x, wire.Status(errno))
		}
	}
	e.pending.clear()
}

// Detach asks for a clean goodbye once nothing is in flight.
func (e *Engine) Detach() { e.detach = true }

// Close fails everything still in flight and stops the engine.
func (e *Engine) Close() {
	e.Fail(syscall.EIO)
	e.conn = Closed
}

func (e *Engine) mustNotBeInReady(what string) {
	if e.inReady {
		panic("txn: " + what + " called between Ready and Advance")
	}
}

// HasReady reports, cheaply, whether Ready may have work (it can return
// true when Ready then finds only completed entries to skip).
func (e *Engine) HasReady() bool {
	if e.inReady {
		return false
	}
	switch e.conn {
	case Down:
		return e.now >= e.retryAt && e.fatal == 0
	case Up:
		e.dropStale()
		return e.closeConn || e.pingDue || (e.pending.len() > 0 && e.sent < e.maxInflight) ||
			(e.detach && e.tab.used == 0 && !e.detached)
	}
	return false
}

// dropStale removes completed transactions from the head of the pending
// queue, so that a non-empty queue always starts with work.
func (e *Engine) dropStale() {
	for e.pending.len() > 0 && !e.pending.at(0).live() {
		e.pending.pop()
	}
}

// Ready returns the work to do. Call Advance when it is done; Ready must
// not be called again before.
func (e *Engine) Ready() *Ready {
	rd := e.prepare()
	e.inReady = true
	for _, x := range rd.Send {
		x.inSend = true
		x.sends++
		r := wire.Request{Op: x.Op, Flags: x.Flags, ID: x.ID, Offset: x.Offset, Length: x.Length, Floor: e.tab.floor}
		r.Put(x.Header[:])
	}
	if rd.Dial {
		e.conn = Dialing
	}
	return rd
}

// prepare fills e.rd from the current state; it changes nothing else.
func (e *Engine) prepare() *Ready {
	rd := &e.rd
	rd.Send = rd.Send[:0]
	rd.Ping, rd.Dial, rd.CloseConn, rd.Disconnect = false, false, false, false
	switch e.conn {
	case Down:
		rd.Dial = e.now >= e.retryAt && e.fatal == 0
	case Up:
		if e.closeConn {
			rd.CloseConn = true
			break
		}
		e.dropStale()
		for i := 0; i < e.pending.len() && e.sent+len(rd.Send) < e.maxInflight; i++ {
			if en := e.pending.at(i); en.live() {
				rd.Send = append(rd.Send, en.x)
			}
		}
		if e.pingDue {
			rd.Ping, rd.PingID = true, e.pingID
		}
		rd.Disconnect = e.detach && e.tab.used == 0 && !e.detached
	}
	return rd
}

// Advance tells the engine that the last Ready was carried out.
func (e *Engine) Advance() {
	if !e.inReady {
		return
	}
	e.inReady = false
	rd := &e.rd
	// Send holds the first live entries of pending: pop them, and the
	// stale entries between them.
	for n := len(rd.Send); n > 0; {
		if e.pending.pop().live() {
			n--
		}
	}
	for _, x := range rd.Send {
		x.inSend = false
		x.state = stSent
		e.sent++
		if x.deferred {
			x.deferred = false
			e.finish(x, x.result)
		}
	}
	if rd.Ping {
		e.pingDue = false
		e.stats.PingsSent++
	}
	if rd.Disconnect {
		e.detach = false // sent once
	}
	rd.Send = rd.Send[:0]
}
