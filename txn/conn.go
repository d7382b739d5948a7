package txn

// Conn drives one Engine over one socket, entirely on the goroutine that
// owns an io_uring ring (a ublk queue's, or a Client's): requests arrive
// with Submit, frames leave with one WRITEV in flight (ringio.Sender),
// replies come in through one RECV in flight (ringio.Receiver; READ
// payloads go straight into the request's buffer when they are not already
// in the staging buffer), the clock is a TIMEOUT on the same ring, and
// completions are delivered on that goroutine. A request therefore costs no
// hand-over between threads: under a slow CPU (the emulated test guest)
// thread wake-ups are what a request pays for, not bytes.
//
// Only connecting runs elsewhere: a goroutine dials and shakes hands, then
// hands the socket over through the loop's Wake.
//
//	owner goroutine:  Submit* ─> Poll ─> Ready ─> WRITEV ──CQE──> Advance
//	                  RECV CQE ─> Receiving/ReadInto ─> Step ─> deliver
//	                  TIMEOUT CQE ─> Tick
//	dialer goroutine: dial + handshake ─> inbox ─> Wake ─> Poll: ConnUp
//
// Tick, ConnUp and ConnDown must not fall between Ready and Advance; while
// a WRITEV is in flight they are deferred until its completion.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/ringio"
	"github.com/dst-dev/dst/internal/sched"
	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
)

// Loop is what the ring's owner offers a Conn. ublk.QueueContext
// implements it.
type Loop interface {
	// GetSQE returns a free SQE on the owner's ring.
	GetSQE() *uring.SQE
	// UserData marks a value (< 2^62) so that its CQE is routed back to
	// Conn.HandleCQE with the value (after FromUserData-style decoding).
	UserData(v uint64) uint64
	// Wake makes the owner call Conn.Poll soon; callable from any
	// goroutine.
	Wake()
}

// user data values of a Conn's SQEs
const (
	udSend uint64 = iota + 1
	udRecv
	udTick
)

const recvBufSize = 256 << 10

// Conn is a transaction engine on a socket on a ring. All methods but
// Wake-driven ones run on the ring owner's goroutine.
type Conn struct {
	loop    Loop
	d       *dialer
	e       *Engine
	log     *zap.Logger
	deliver func(Handle, syscall.Errno)
	onState func(ConnState)
	// onSession, if set, learns a new session token before the first
	// request goes out on it.
	onSession func(wire.Token)

	fd       int
	session  wire.Token
	snd      *ringio.Sender
	rcv      *ringio.Receiver
	closing  bool // the socket is shut down; waiting for its SQEs
	readyOut bool // a Ready is being sent: Advance at the WRITEV's end
	tickDue  int  // ticks that arrived while readyOut
	lost     error

	// reply being received straight into a buffer
	partial  bool
	rep      wire.Reply
	scratch  []byte
	pingHdr  [wire.RequestHeaderSize]byte
	discHdr  [wire.RequestHeaderSize]byte
	ts       unix.Timespec
	tickOn   bool
	stopping bool
	stopAt   uint64
	state    ConnState
	comps    []Completion

	// Frame protection (PROTOCOL.md §8), per connection: nil or a None
	// session means no trailers (tag 0). Every frame this side writes is
	// sealed in the order it is queued on the Sender, every reply opened
	// in the order its header is read, so the counters of both
	// directions follow the stream. Crypto runs inline on the ring's
	// goroutine: a ublk queue's thread has nothing else to do before the
	// frame is sealed or opened, a 4 KiB frame costs 0.25–2.7 µs, and
	// handing it to another thread costs a wake-up each way (0.5–2 µs).
	// With Options.CryptoPool, WRITE payloads above crypto.DefaultInline
	// are sealed by its workers, the batch in parallel, before the WRITEV
	// (pooled, sealWait); BenchmarkClientCrypto measures both.
	cs      *crypto.Session
	tag     int
	arena   []byte // AEAD: the sealed WRITE payloads of the WRITEV in flight
	arenaN  int
	pingTrl [maxTag]byte
	discTrl [maxTag]byte
	rhdr    [wire.ReplyHeaderSize]byte // the header of the reply being received
	rframe  crypto.Frame               // and its place in the stream
	sframe  crypto.Frame               // the frame being sealed
	// onSeal (tests) sees every frame sealed: its connection's session,
	// its number, its header.
	onSeal func(cs *crypto.Session, seq uint64, hdr []byte)
	body   []byte // its payload ‖ trailer, before verification
	// a checksummed reply with payload: received in place (sumStep)
	sumPhase uint8  // 0: none; 1: payload, 2: trailer being received
	sumDst   []byte // where the payload goes
	sumOwn   bool   // sumDst is the request's buffer (Receiving)
	rtrl     [maxTag]byte
	// frames sealed by Options.CryptoPool
	poolInline int
	sealQ      *crypto.Queue
	sealJobs   []crypto.Job
	sealing    int
	unpushed   int           // bytes queued since the last push
	sched      sched.Monitor // whether pushing can overlap

	// from the dialer goroutine
	mu      sync.Mutex
	inbox   []dialResult
	dialing bool
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stats   Stats // copy of the engine's, for other goroutines
}

type dialResult struct {
	fd  int
	w   *wire.Welcome
	cs  *crypto.Session
	err error
}

// maxTag is the largest trailer of any suite.
const maxTag = 32

// newConn makes a Conn in state Down; Start arms it.
func newConn(loop Loop, d *dialer, deliver func(Handle, syscall.Errno)) *Conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &Conn{
		loop: loop, d: d, e: New(d.opts.engineConfig()), log: d.opts.Log,
		deliver: deliver, onState: d.opts.OnState, onSeal: d.opts.onSeal, fd: -1,
		ts:  unix.NsecToTimespec(int64(d.opts.Tick)),
		ctx: ctx, cancel: cancel,
		comps: make([]Completion, 0, 64),
	}
}

// Start arms the clock and, with l non-nil, installs an already
// negotiated connection; without one the engine dials at the next Poll.
func (c *Conn) Start(l *link) error {
	if l != nil {
		fd, err := ringio.DetachFd(l.nc)
		if err != nil {
			return err
		}
		// The engine must be Dialing to accept the connection.
		c.e.Ready()
		c.e.Advance()
		c.install(fd, l.w, l.cs)
	}
	c.armTick()
	return nil
}

// Submit starts a transaction (owner goroutine). The result is delivered
// later, from Poll or HandleCQE.
func (c *Conn) Submit(h Handle, op wire.Op, flags wire.Flags, off uint64, length uint32, buf []byte) {
	if !c.e.Submit(h, op, flags, off, length, buf) {
		c.deliver(h, syscall.EBUSY)
	}
}

// Poll does the work that became due: a connection from the dialer, frames
// to send, completions to deliver. The owner calls it after every batch of
// Submits and CQEs, and when woken.
func (c *Conn) Poll() {
	c.mu.Lock()
	inbox := c.inbox
	c.inbox = nil
	c.mu.Unlock()
	for _, r := range inbox {
		c.dialDone(r)
	}
	c.pump()
	c.flushCompletions()
	c.reportState()
}

func (c *Conn) get() *uring.SQE { return c.loop.GetSQE() }

// pump hands ready frames to the Sender, one WRITEV at a time.
func (c *Conn) pump() {
	for !c.readyOut && c.e.HasReady() {
		rd := c.e.Ready()
		sent := false
		if c.fd >= 0 && !c.closing {
			err := c.queue(rd)
			if err != nil {
				c.snd.Abort()
				c.shutdown(err)
			} else {
				sent = c.snd.Flush(c.get)
			}
		}
		if rd.Dial {
			c.startDial()
		}
		if rd.CloseConn {
			c.shutdown(errors.New("connection declared dead"))
		}
		if sent {
			c.readyOut = true // Advance when the WRITEV completes
			return
		}
		c.e.Advance()
		c.afterAdvance()
		if rd.CloseConn || rd.Dial {
			return // wait for the socket's SQEs / the dialer
		}
	}
}

// queue queues the frames of rd on the Sender: headers and WRITE payloads
// straight from the transactions (zero copy), and with crypto each
// frame's trailer — sealed here, in the order the frames are queued. A
// resend is a new frame: sealed again, under the next counter. Under
// AEAD a WRITE payload is encrypted into the arena, since the
// plaintext must stay intact for a resend.
func (c *Conn) queue(rd *Ready) error {
	if c.d.nbd != nil {
		c.queueNBD(rd)
		return nil
	}
	if c.tag == 0 {
		for _, x := range rd.Send {
			c.snd.Queue(x.Header[:])
			if x.Op == wire.OpWrite {
				c.snd.Queue(x.Buf)
			}
		}
	} else {
		c.arenaN = 0 // the previous WRITEV has completed
		c.unpushed = 0
		defer c.sealWait() // before the WRITEV
		for _, x := range rd.Send {
			var payload []byte
			if x.Op == wire.OpWrite {
				payload = x.Buf
			}
			if err := c.seal(x.Header[:], payload, x.Trailer[:c.tag]); err != nil {
				return err
			}
		}
	}
	if rd.Ping {
		r := wire.Request{Op: wire.OpPing, ID: rd.PingID, Floor: c.e.Floor()}
		r.Put(c.pingHdr[:])
		if err := c.seal(c.pingHdr[:], nil, c.pingTrl[:c.tag]); err != nil {
			return err
		}
	}
	if rd.Disconnect {
		r := wire.Request{Op: wire.OpDisconnect, Floor: c.e.Floor()}
		r.Put(c.discHdr[:])
		if err := c.seal(c.discHdr[:], nil, c.discTrl[:c.tag]); err != nil {
			return err
		}
	}
	return nil
}

// seal protects one frame and queues it: hdr, payload, trailer.
func (c *Conn) seal(hdr, payload, trailer []byte) error {
	if c.tag == 0 {
		c.snd.Queue(hdr)
		return nil
	}
	snd := c.cs.Send
	var err error
	if c.sframe, err = snd.Next(len(payload)); err != nil {
		return err
	}
	if c.onSeal != nil {
		c.onSeal(c.cs, c.sframe.Seq(), hdr)
	}
	if len(payload) > 0 && snd.Encrypts() {
		out := c.take(len(payload) + c.tag)
		if c.pooled(hdr, payload, nil, out) {
			c.sframe.SealTo(hdr, payload, out)
		}
		c.snd.Queue(hdr, out)
		if len(payload) > pushFrameMax {
			return nil
		}
		return c.push(len(hdr) + len(out))
	}
	if c.pooled(hdr, payload, trailer, nil) {
		c.sframe.Seal(hdr, payload, trailer)
	}
	if len(payload) > 0 {
		c.snd.Queue(hdr, payload, trailer)
	} else {
		c.snd.Queue(hdr, trailer)
	}
	if len(payload) > pushFrameMax {
		return nil
	}
	return c.push(len(hdr) + len(payload) + len(trailer))
}

// pushChunk: while a batch is being sealed, every pushChunk bytes sealed
// are written to the socket at once (ringio.Sender.Push) instead of
// waiting for the batch's WRITEV, so the exporter opens the first frames
// while this side seals the next ones: the two sides' crypto overlaps
// instead of taking turns. Only while this thread gets a CPU when it
// wants one (sched.Monitor): on an oversubscribed machine the exporter
// has no CPU to overlap with, and the extra writes and wake-ups of a
// batch cut in pieces cost more than they save. Only frames of at most
// pushFrameMax payload bytes count: a batch of large frames still
// leaves whole (pushing each 128 KiB WRITE was not clearly faster in
// BenchmarkClientCrypto: mixed across alternated runs, docs/BENCHMARKS.md).
const (
	pushChunk    = 32 << 10
	pushFrameMax = 64 << 10
)

// push counts n bytes just queued and pushes what is queued once a chunk
// is there. Frames handed to the pool are not sealed yet: then
// everything waits for the WRITEV (sealWait).
func (c *Conn) push(n int) error {
	c.unpushed += n
	if c.unpushed < pushChunk || c.sealing > 0 {
		return nil
	}
	c.unpushed = 0
	if c.sched.Contended(time.Now()) {
		return nil
	}
	if _, err := c.snd.Push(); err != nil {
		return err
	}
	return nil
}

// pooled hands the frame just numbered (c.sframe) to the crypto pool if
// there is one and its payload is above the inline threshold, and reports
// whether the caller must seal it itself. Pooled frames are waited for by
// sealWait before the WRITEV starts.
func (c *Conn) pooled(hdr, payload, trailer, out []byte) bool {
	pool := c.d.opts.CryptoPool
	if pool == nil || len(payload) <= c.poolInline {
		return true
	}
	if c.sealQ == nil {
		n := c.e.cfg.Capacity + 2
		c.sealQ = pool.NewQueue(n, c.poolInline)
		c.sealJobs = make([]crypto.Job, n)
	}
	j := &c.sealJobs[c.sealing]
	j.Frame = c.sframe
	j.Hdr, j.Payload, j.Trailer, j.Body, j.Open = hdr, payload, trailer, out, false
	c.sealQ.Submit(j)
	c.sealing++
	return false
}

// sealWait waits for the frames the pool seals (the ring's thread sleeps
// meanwhile: it has nothing to send before they are done).
func (c *Conn) sealWait() {
	for ; c.sealing > 0; c.sealing-- {
		j, _ := c.sealQ.Next()
		j.Hdr, j.Payload, j.Trailer, j.Body = nil, nil, nil, nil
	}
}

// take returns n bytes of the arena. A full arena is replaced (the slices
// already handed out keep the old one alive until the WRITEV is done), so
// it grows to the largest batch and then allocates nothing.
func (c *Conn) take(n int) []byte {
	if c.arenaN+n > len(c.arena) {
		c.arena = make([]byte, max(2*len(c.arena), n, 1<<20))
		c.arenaN = 0
	}
	b := c.arena[c.arenaN : c.arenaN+n : c.arenaN+n]
	c.arenaN += n
	return b
}

// afterAdvance applies what was deferred while a Ready was out.
func (c *Conn) afterAdvance() {
	for ; c.tickDue > 0; c.tickDue-- {
		c.e.Tick()
	}
	c.maybeClosed()
}

// HandleCQE handles a completion of one of the Conn's SQEs; v is the value
// given to Loop.UserData.
func (c *Conn) HandleCQE(v uint64, res int32) {
	switch v {
	case udSend:
		done, err := c.snd.Complete(res, c.get)
		if err != nil {
			c.readyOut = false
			c.e.Advance()
			c.shutdown(err)
			c.afterAdvance()
			return
		}
		if done {
			c.readyOut = false
			c.e.Advance()
			c.afterAdvance()
		}
	case udRecv:
		direct, err := c.rcv.Complete(res, c.get)
		if err != nil {
			c.shutdown(err)
			c.maybeClosed()
			return
		}
		if direct {
			c.partial = false
			switch {
			case c.sumPhase > 0:
				c.sumPhase++
				c.sumStep()
			case c.tag > 0:
				c.opened(c.rep)
			default:
				c.step(c.rep)
			}
		}
		c.parse()
	case udTick:
		c.tickOn = false
		if c.readyOut {
			c.tickDue++
		} else {
			c.e.Tick()
		}
		if c.stopping && c.e.Now() >= c.stopAt {
			c.shutdown(errors.New("detach: no DISCONNECT echo in time"))
		}
		if !(c.stopping && c.fd < 0) {
			c.armTick()
		}
		c.maybeClosed()
	}
}

// parse consumes complete replies from the staging buffer, then keeps a
// RECV in flight.
func (c *Conn) parse() {
	if c.d.nbd != nil {
		c.parseNBD()
		return
	}
	for !c.partial && !(c.tag > 0 && c.closing) {
		b := c.rcv.Buffered()
		if len(b) < wire.ReplyHeaderSize {
			break
		}
		r, err := wire.ParseReply(b[:wire.ReplyHeaderSize])
		if err != nil {
			c.shutdown(err)
			return
		}
		if c.tag > 0 {
			// Payload and trailer are received together and verified
			// before anything of the frame is used (PROTOCOL.md §8.5).
			copy(c.rhdr[:], b[:wire.ReplyHeaderSize])
			c.rcv.Consume(wire.ReplyHeaderSize)
			n := r.PayloadLen()
			if c.rframe, err = c.cs.Recv.Next(n); err != nil {
				c.shutdown(err)
				return
			}
			if n > 0 && !c.cs.Recv.Encrypts() {
				// A checksum: the payload goes straight into the
				// request's buffer, as without crypto, and the trailer
				// after it; Step only once they verify.
				dst := c.e.Receiving(r.ID, r.Length)
				c.sumOwn = dst != nil
				if dst == nil {
					if cap(c.body) < n {
						c.body = make([]byte, n)
					}
					dst = c.body[:n]
				}
				c.sumDst, c.rep, c.sumPhase = dst, r, 1
				if !c.sumStep() {
					return // a direct RECV's completion resumes here
				}
				continue
			}
			if b := c.rcv.Buffered(); len(b) >= n+c.tag {
				// All in the staging buffer (small replies): opened
				// from there, into the request's buffer, no copy.
				c.openIn(r, b[:n+c.tag])
				c.rcv.Consume(n + c.tag)
				continue
			}
			if cap(c.body) < n+c.tag {
				c.body = make([]byte, n+c.tag)
			}
			done, err := c.rcv.ReadInto(c.body[:n+c.tag], c.get)
			if err != nil {
				c.shutdown(err)
				return
			}
			if !done {
				c.partial, c.rep = true, r
				return
			}
			c.opened(r)
			continue
		}
		c.rcv.Consume(wire.ReplyHeaderSize)
		if !c.receive(r, r.PayloadLen()) {
			return
		}
	}
	c.keepReceiving()
}

// receive reads the n bytes of payload that follow reply r (a READ's
// data: straight into the request's buffer, or discarded into scratch when
// the engine does not want it) and steps r. It returns false when the
// caller must stop parsing: the payload is still arriving (the direct
// RECV's completion steps r) or the connection failed.
func (c *Conn) receive(r wire.Reply, n int) bool {
	if n > 0 {
		dst := c.e.Receiving(r.ID, r.Length)
		if dst == nil {
			if cap(c.scratch) < n {
				c.scratch = make([]byte, n)
			}
			dst = c.scratch[:n]
		}
		done, err := c.rcv.ReadInto(dst, c.get)
		if err != nil {
			c.shutdown(err)
			return false
		}
		if !done {
			c.partial, c.rep = true, r
			return false
		}
	}
	c.step(r)
	return true
}

// keepReceiving keeps a RECV in flight on a live socket.
func (c *Conn) keepReceiving() {
	if c.fd >= 0 && !c.closing && !c.rcv.Busy() {
		if !c.rcv.Arm(c.get) {
			c.shutdown(errors.New("receive buffer full"))
		}
	}
}

// opened verifies the reply r whose payload and trailer are in c.body and
// steps it (openIn). A frame that does not verify is lost (PROTOCOL.md §8.5): not
// stepped, so its transaction is resent after its timeout, and it does
// not count as a sign of life; it is counted in Stats.Corrupt. A checksum
// mismatch drops the frame and the connection goes on; an AEAD failure
// (tampering, or corruption that a checksum suite would have caught)
// closes the connection: the next one gets fresh keys, and the engine
// resends what is unanswered.
func (c *Conn) opened(r wire.Reply) {
	c.openIn(r, c.body[:r.PayloadLen()+c.tag])
}

// openIn is opened with the reply's payload and trailer in in (c.body,
// or the staging buffer); it may decrypt in place.
func (c *Conn) openIn(r wire.Reply, in []byte) {
	n := r.PayloadLen()
	var dst []byte
	if n > 0 {
		dst = c.e.Receiving(r.ID, r.Length)
	}
	out := dst
	if out == nil {
		out = in[:n]
	}
	if err := c.rframe.OpenTo(c.rhdr[:], in, out); err != nil {
		c.e.Lost(r.ID, dst != nil)
		if err == crypto.ErrAuth {
			c.shutdown(fmt.Errorf("reply frame %d: %w", c.rframe.Seq(), err))
			return
		}
		c.log.Debug("reply dropped", zap.Stringer("url", c.d.url), zap.Uint64("frame", c.rframe.Seq()), zap.Error(err))
		return
	}
	c.step(r)
}

// sumStep receives the checksummed reply c.rep: its payload into c.sumDst
// (phase 1), then its trailer (phase 2), then opens it. It returns false
// while a receive is in flight (HandleCQE moves to the next phase) or the
// connection failed.
func (c *Conn) sumStep() bool {
	for {
		var b []byte
		switch c.sumPhase {
		case 1:
			b = c.sumDst
		case 2:
			b = c.rtrl[:c.tag]
		default:
			c.sumPhase = 0
			if err := c.rframe.Open(c.rhdr[:], c.sumDst, c.rtrl[:c.tag]); err != nil {
				c.e.Lost(c.rep.ID, c.sumOwn)
				c.log.Debug("reply dropped", zap.Stringer("url", c.d.url), zap.Uint64("frame", c.rframe.Seq()), zap.Error(err))
			} else {
				c.step(c.rep)
			}
			c.sumDst = nil
			return true
		}
		done, err := c.rcv.ReadInto(b, c.get)
		if err != nil {
			c.sumPhase = 0
			c.shutdown(err)
			return false
		}
		if !done {
			c.partial = true
			return false
		}
		c.sumPhase++
	}
}

func (c *Conn) step(r wire.Reply) {
	c.e.Step(r)
	if c.stopping && c.e.Detached() {
		c.shutdown(nil)
	}
}

func (c *Conn) flushCompletions() {
	c.comps = c.e.TakeCompletions(c.comps[:0])
	for _, cp := range c.comps {
		c.deliver(cp.Handle, cp.Err)
	}
	c.mu.Lock()
	c.stats = c.e.Stats()
	c.mu.Unlock()
}

func (c *Conn) reportState() {
	if s := c.e.State(); s != c.state {
		c.state = s
		if c.onState != nil {
			c.onState(s)
		}
	}
}

func (c *Conn) armTick() {
	if c.tickOn {
		return
	}
	s := c.get()
	s.PrepTimeout(&c.ts, 0, 0)
	s.SetUserData(c.loop.UserData(udTick))
	c.tickOn = true
}

// shutdown ends the current socket: its RECV and WRITEV complete with an
// error, and once neither is in flight maybeClosed closes it.
func (c *Conn) shutdown(err error) {
	if c.fd < 0 || c.closing {
		return
	}
	c.closing = true
	c.lost = err
	unix.Shutdown(c.fd, unix.SHUT_RDWR) //nolint:errcheck // already broken is fine
}

// maybeClosed finishes a shutdown when the socket's SQEs are done.
func (c *Conn) maybeClosed() {
	if !c.closing || c.snd.Busy() || c.rcv.Busy() || c.readyOut {
		return
	}
	unix.Close(c.fd)
	c.fd = -1
	c.closing = false
	c.partial = false
	c.sumPhase, c.sumDst = 0, nil
	if c.lost != nil && !c.stopping {
		c.log.Warn("connection lost", zap.Stringer("url", c.d.url), zap.Error(c.lost))
	}
	c.e.ConnDown()
}

func (c *Conn) startDial() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dialing || c.ctx.Err() != nil {
		return
	}
	c.dialing = true
	session := c.session
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		l, err := c.d.handshake(c.ctx, session)
		r := dialResult{fd: -1, err: err}
		if err == nil {
			r.w, r.cs = l.w, l.cs
			r.fd, r.err = ringio.DetachFd(l.nc)
		}
		c.mu.Lock()
		c.dialing = false
		if c.ctx.Err() != nil {
			if r.fd >= 0 {
				unix.Close(r.fd)
			}
		} else {
			c.inbox = append(c.inbox, r)
		}
		c.mu.Unlock()
		c.loop.Wake()
	}()
}

func (c *Conn) dialDone(r dialResult) {
	if r.err != nil {
		c.log.Warn("connect failed", zap.Stringer("url", c.d.url), zap.Error(r.err))
		c.e.DialFailed()
		var ce *changedError
		if errors.As(r.err, &ce) {
			c.e.Fail(syscall.EIO)
		}
		return
	}
	if c.e.State() != Dialing || c.stopping {
		unix.Close(r.fd)
		return
	}
	c.log.Info("connected", zap.Stringer("url", c.d.url), zap.Bool("resumed", r.w.Resumed))
	c.install(r.fd, r.w, r.cs)
}

func (c *Conn) install(fd int, w *wire.Welcome, cs *crypto.Session) {
	if !c.session.IsZero() && !w.Resumed {
		// The exporter no longer knows the session (it restarted, or the
		// linger time passed): what is unanswered is resent into a new
		// one (PROTOCOL.md §5.4).
		c.log.Warn("session not resumed: a new session starts", zap.Stringer("url", c.d.url), zap.Stringer("old", c.session))
	}
	if w.Session != c.session && c.onSession != nil {
		c.onSession(w.Session)
	}
	c.fd = fd
	c.session = w.Session
	c.cs, c.tag = cs, 0
	if cs != nil {
		c.tag = cs.Send.TagSize()
		c.poolInline = crypto.DefaultInline(cs.Suite)
	}
	c.snd = ringio.NewSender(fd, c.loop.UserData(udSend))
	c.rcv = ringio.NewReceiver(fd, c.loop.UserData(udRecv), recvBufSize)
	c.e.ConnUp(int(w.MaxInflight))
	c.rcv.Arm(c.get)
}

// Stop begins a clean detach: once nothing is in flight, DISCONNECT is
// sent and, after the exporter's echo (or within two ping intervals), the
// socket is closed. Inflight drops to zero when it is all over.
func (c *Conn) Stop() {
	if c.stopping {
		return
	}
	c.stopping = true
	c.stopAt = c.e.Now() + 2*c.e.cfg.Ping
	c.e.Detach()
	c.cancel() // no more dialing
	if c.e.State() != Up {
		c.e.Close()
	}
	c.Poll()
}

// Inflight counts the Conn's SQEs in the ring; the owner must not close
// the ring before it is zero.
func (c *Conn) Inflight() int {
	n := 0
	if c.tickOn {
		n++
	}
	if c.snd != nil && c.snd.Busy() {
		n++
	}
	if c.rcv != nil && c.rcv.Busy() {
		n++
	}
	if c.fd >= 0 && !c.closing && c.stopping {
		n++ // not closed yet
	}
	return n
}

// Close releases what Stop left: it fails what is still in flight, waits
// for a dialer and closes the socket. Call it after Inflight is zero.
func (c *Conn) Close() {
	c.sched.Close()
	c.cancel()
	c.wg.Wait()
	c.e.Close()
	c.flushCompletions()
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
	c.mu.Lock()
	for _, r := range c.inbox {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
	}
	c.inbox = nil
	c.mu.Unlock()
}

// State returns the connection state (owner goroutine).
func (c *Conn) State() ConnState { return c.e.State() }

// Stats returns the engine's counters as of the last Poll (any goroutine).
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}
