package export

// The NBD transmission phase on one ring
//
// A plain (not TLS) NBD connection on a socket is served like a DST
// connection (loop.go): after the negotiation, which uses blocking reads
// and writes on the net.Conn, the socket is taken out of Go's poller
// (ringio.DetachFd) and one goroutine, locked to its thread, owns one
// io_uring ring (SingleIssuer, DeferTaskrun) and does everything:
//
//	Wait (one io_uring_enter: submit what the last step prepared, sleep
//	until a completion) → for each CQE by the kind in its user data:
//	  RECV  bytes in the 256 KiB staging buffer, or a large WRITE payload
//	        received straight into its aligned buffer (ringio.ReadInto);
//	  disk  backend Result → the request's reply is queued;
//	  SEND  the WRITEV of earlier replies completed: their buffers go
//	        back;
//	  wake  the eventfd: results of the goroutines below, Shutdown.
//	→ step: parse every complete request in the staging buffer (the
//	  checks of dispatch, then backend Prep of an SQE on this ring), start
//	  one WRITEV of every queued reply (headers and READ payloads straight
//	  from the I/O buffers), re-arm the RECV unless MaxInflight requests
//	  or MaxBufferBytes of buffers are held (backpressure is not reading).
//
// Why: the earlier design (a reader goroutine, a backend.Worker thread
// with its own ring, a writer goroutine; kept for TLS connections, whose
// bytes must pass through crypto/tls, and conns without a descriptor)
// paid two or three thread wake-ups per request, and on the 2-CPU host
// the profile of 4k random reads at depth 32 was a third in
// finish_task_switch, with futex and nanosleep (Go's scheduler) the most
// frequent system calls: 21k IOPS against qemu-nbd's 27k. Here a request
// crosses no thread on its normal path.
//
// What leaves the loop: storage operations that cannot go on the ring
// (backend NeedsSync or StepSync: faults, short transfers, FUA discards)
// go to at most nbdSyncHelpers goroutines; unaligned writes to the
// read-modify-write goroutine (rmw, serialised per export); memory files
// (tmpfs) are read and written inline with pread/pwrite (io_uring would
// punt them to io-wq). Their results come back through a locked list and
// the eventfd, whose read stays armed on the ring.
//
// Ending: EOF, DISC, a read error, a protocol violation or Shutdown stop
// the reading; what was admitted completes and is answered (a half
// received WRITE is dropped unanswered); then the socket is shut down and
// the loop waits until nothing of it is in flight on the ring or in a
// goroutine before closing the ring and the socket. A reply write that
// fails drops every later reply. During Shutdown a client that takes no
// reply for nbdWriteTimeout is cut off.

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/ringio"
	"github.com/dst-dev/dst/internal/uring"
)

const (
	// nbdSyncHelpers bounds the goroutines doing a connection's storage
	// operations that cannot go on its ring.
	nbdSyncHelpers = 4
	// nbdMaxBatch bounds the replies of one WRITEV (two iovecs each,
	// within IOV_MAX).
	nbdMaxBatch = 500
)

// nbdRing is the ring loop's state; only its goroutine touches it, but
// for the cross-thread list (xmu).
type nbdRing struct {
	c      *nbdConn
	ring   *uring.Ring
	fd     int
	rcv    *ringio.Receiver
	snd    *ringio.Sender
	cqes   []uring.CQE
	getSQE ringio.GetSQE

	efd       int
	efdVal    *uint64
	wakeArmed bool
	wakeStop  bool // the eventfd read is cancelled for good (teardown)
	cancels   int

	xmu      sync.Mutex
	xq       []*nbdReq // completed by a goroutine
	xsignal  bool      // the eventfd was written since the loop last took xq
	xclosed  bool
	xtake    []*nbdReq
	syncQ    chan *nbdReq
	helpers  int
	syncBusy int
	helperWG sync.WaitGroup

	slots slotTable[*nbdReq] // disk I/O on the ring, by the low bits of the user data

	out    []*nbdReq // replies to send
	flight []*nbdReq // replies in the WRITEV in flight
	iov    [][]byte

	pend     *nbdReq // a WRITE whose payload is being received into its buffer
	inflight int     // requests admitted and not yet released
	ops      int     // requests executing: on the ring, in a helper, in rmw
	blocked  bool    // parse stopped at a limit: do not read more

	reading  bool
	broken   bool // a reply write failed: replies are dropped
	shut     bool // the socket is shut down
	endErr   error
	stuckGen uint64 // sends completed, to tell a stuck client during Shutdown
	sendGen  uint64
	stuckAt  time.Time
}

// ringable tells whether c can be served on a ring: a plain connection
// with a socket descriptor.
func (c *nbdConn) ringable() bool {
	if c.rw != c.nc {
		return false // TLS: crypto/tls must see the bytes
	}
	_, ok := c.nc.(syscall.Conn)
	return ok
}

// serveRing runs the transmission phase on a ring. It returns false,
// having changed nothing, if the ring cannot be set up; the caller then
// serves the connection the other way.
func (c *nbdConn) serveRing() bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cq := uring.RoundPow2(uint32(min(max(c.srv.cfg.MaxInflight+64, 512), 8192)))
	r, err := uring.New(uring.Options{Entries: ringEntries, CQEntries: cq, SingleIssuer: true, DeferTaskrun: true})
	if err != nil {
		c.log.Info("no io_uring for the NBD connection: serving it with goroutines", zap.Error(err))
		return false
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		r.Close()
		c.log.Info("no eventfd for the NBD connection: serving it with goroutines", zap.Error(err))
		return false
	}
	fd, err := ringio.DetachFd(c.nc)
	if err != nil {
		// DetachFd closes the conn only once it has the duplicate.
		r.Close()
		unix.Close(efd)
		c.log.Info("cannot hand the NBD socket to io_uring: serving it with goroutines", zap.Error(err))
		return false
	}
	g := &nbdRing{c: c, ring: r, fd: fd, efd: efd, efdVal: new(uint64), cqes: make([]uring.CQE, 256), reading: true}
	g.getSQE = g.sqe
	g.rcv = ringio.NewReceiver(fd, udRecv, stagingSize)
	g.snd = ringio.NewSender(fd, udSend)
	c.bufMax = c.srv.cfg.MaxBufferBytes
	c.ring = g
	kick := g.kickFn
	c.kick.Store(&kick)
	g.armWake()
	g.loop()
	return true
}

func (g *nbdRing) kickFn() {
	g.xmu.Lock()
	g.signalLocked()
	g.xmu.Unlock()
}

// signalLocked writes the eventfd unless a wake-up is on its way.
func (g *nbdRing) signalLocked() {
	if g.xsignal || g.xclosed {
		return
	}
	g.xsignal = true
	var one = [8]byte{1}
	_, _ = unix.Write(g.efd, one[:]) // only fails if the counter would overflow: the loop wakes anyway
}

// post hands a request completed by a goroutine back to the loop.
func (g *nbdRing) post(q *nbdReq) {
	g.xmu.Lock()
	g.xq = append(g.xq, q)
	g.signalLocked()
	g.xmu.Unlock()
}

func (g *nbdRing) sqe() *uring.SQE {
	for {
		if s := g.ring.GetSQE(); s != nil {
			return s
		}
		if _, err := g.ring.Submit(); err != nil {
			panic(fmt.Sprintf("export: NBD conn: ring submit failed with a full SQ: %v", err))
		}
	}
}

func (g *nbdRing) armWake() {
	s := g.getSQE()
	s.PrepReadEventfd(g.efd, g.efdVal)
	s.SetUserData(udWake)
	g.wakeArmed = true
}

func (g *nbdRing) cancel(target uint64) {
	s := g.getSQE()
	s.PrepCancel(target)
	s.SetUserData(udCancel)
	g.cancels++
}

func (g *nbdRing) loop() {
	c := g.c
	g.step()
	for !g.finished() {
		timeout := int64(-1)
		if c.stopping.Load() {
			timeout = int64(time.Second) // watch for a client that takes no reply
		}
		n, err := g.ring.Wait(g.cqes, timeout)
		switch {
		case err == uring.ErrTimeout:
		case err != nil:
			c.log.Error("io_uring wait failed: abandoning the NBD connection and its buffers", zap.Error(err))
			g.leak()
			return
		}
		for i := range n {
			g.handle(&g.cqes[i])
		}
		g.step()
	}
	g.teardown()
}

// quiet: nothing of the connection is in flight but the eventfd read.
func (g *nbdRing) quiet() bool {
	return g.shut && !g.rcv.Busy() && !g.snd.Busy() && g.ops == 0 && g.cancels == 0 && g.pend == nil
}

func (g *nbdRing) finished() bool { return g.quiet() && !g.wakeArmed }

func (g *nbdRing) handle(cqe *uring.CQE) {
	switch cqe.UserData >> kindShift {
	case kindRecv:
		g.onRecv(cqe.Res)
	case kindSend:
		g.onSend(cqe.Res)
	case kindWake:
		g.wakeArmed = false
		g.xmu.Lock()
		g.xsignal = false
		g.xmu.Unlock()
		if !g.wakeStop {
			g.armWake()
		}
	case kindDisk:
		g.onDisk(uint32(cqe.UserData), cqe.Res)
	case kindCancel:
		g.cancels--
	}
}

func (g *nbdRing) step() {
	c := g.c
	g.drainX()
	if !g.broken && c.aborted.Load() {
		// SetAccess: drop everything, close once quiet (it logged why).
		g.stopReading(errors.New("access revoked by a new access list"))
		g.breakSend()
	}
	if g.reading && c.stopping.Load() {
		g.stopReading(nil)
	}
	if g.reading {
		g.parse()
	}
	if !g.shut {
		g.flushOut()
	}
	if g.reading && !g.blocked && g.pend == nil && !g.rcv.Busy() {
		g.rcv.Arm(g.getSQE)
	}
	if !g.reading && !g.shut && g.ops == 0 && g.pend == nil && (g.broken || len(g.out) == 0 && !g.snd.Busy()) {
		g.shutdown()
	}
	if !g.shut && c.stopping.Load() {
		g.watchStuck()
	}
	if g.quiet() && g.wakeArmed && !g.wakeStop {
		// Nothing can post any more (ops == 0): the eventfd read goes,
		// and its CQE is not re-armed.
		g.wakeStop = true
		g.cancel(udWake)
	}
}

// watchStuck cuts off, during Shutdown, a client that took no reply for
// nbdWriteTimeout.
func (g *nbdRing) watchStuck() {
	if !g.snd.Busy() {
		g.stuckAt = time.Time{}
		return
	}
	now := time.Now()
	if g.stuckAt.IsZero() || g.sendGen != g.stuckGen {
		g.stuckAt, g.stuckGen = now, g.sendGen
		return
	}
	if now.Sub(g.stuckAt) >= nbdWriteTimeout {
		g.c.log.Info("NBD client takes no reply during shutdown: closing", zap.Duration("after", nbdWriteTimeout))
		g.breakSend()
	}
}

// stopReading ends the reading for err (nil: DISC or Shutdown); what was
// admitted is still answered.
func (g *nbdRing) stopReading(err error) {
	if !g.reading {
		return
	}
	g.reading = false
	g.endErr = err
	if g.rcv.Busy() {
		g.cancel(udRecv) // a half-received WRITE is dropped (onRecv)
	}
}

// breakSend drops every reply not yet sent: the socket broke.
func (g *nbdRing) breakSend() {
	if g.broken {
		return
	}
	g.broken = true
	g.c.broken.Store(true)
	g.stopReading(g.endErr)
	unix.Shutdown(g.fd, unix.SHUT_RDWR) //nolint:errcheck // a reset socket is fine
	if g.snd.Busy() {
		g.cancel(udSend)
	}
	g.snd.Abort()
	for i, q := range g.out {
		g.release(q)
		g.out[i] = nil
	}
	g.out = g.out[:0]
}

// shutdown ends the connection once everything admitted is answered.
func (g *nbdRing) shutdown() {
	g.shut = true
	unix.Shutdown(g.fd, unix.SHUT_RDWR) //nolint:errcheck
	if g.rcv.Busy() {
		g.cancel(udRecv)
	}
	if g.snd.Busy() {
		g.cancel(udSend)
	}
	g.logEnd()
}

func (g *nbdRing) logEnd() {
	c, err := g.c, g.endErr
	switch {
	case err == nil && c.stopping.Load():
		c.log.Info("NBD connection stops reading: exporter shutting down")
	case err == nil:
		c.log.Info("NBD client disconnects")
	case errors.Is(err, io.EOF):
		c.log.Info("NBD connection closed by the client")
	default:
		var pe *nbd.ProtocolError
		if errors.As(err, &pe) {
			c.log.Warn("closing NBD connection: protocol error", zap.Error(err))
		} else if !g.broken {
			c.log.Info("NBD connection lost", zap.Error(err))
		}
	}
}

func (g *nbdRing) drainX() {
	g.xmu.Lock()
	g.xtake, g.xq = g.xq, g.xtake[:0]
	g.xmu.Unlock()
	for i, q := range g.xtake {
		g.ops--
		if q.syncHelper {
			q.syncHelper = false
			g.syncBusy--
		}
		g.queue(q)
		g.xtake[i] = nil
	}
}

// queue queues q's reply (q.errno, q.msg set).
func (g *nbdRing) queue(q *nbdReq) {
	if g.broken || g.shut {
		g.release(q)
		return
	}
	g.out = append(g.out, q)
}

// release gives back q's resources.
func (g *nbdRing) release(q *nbdReq) {
	g.inflight--
	g.c.release(q)
}

// parse admits every complete request in the staging buffer, until the
// reading stops, a WRITE payload must be received first, or a limit is
// reached.
func (g *nbdRing) parse() {
	c := g.c
	g.blocked = false
	for g.reading && g.pend == nil && !g.rcv.Busy() {
		b := g.rcv.Buffered()
		if len(b) < nbd.RequestLen {
			return
		}
		r, err := nbd.ParseRequest(b[:nbd.RequestLen])
		if err != nil {
			g.stopReading(err)
			return
		}
		if r.Type == nbd.CmdDisc {
			g.rcv.Consume(nbd.RequestLen)
			g.stopReading(nil)
			return
		}
		write := r.Type == nbd.CmdWrite
		if write && r.Length > nbd.MaxPayload {
			g.stopReading(&nbd.ProtocolError{What: "WRITE", Reason: fmt.Sprintf("payload of %d bytes exceeds %d", r.Length, nbd.MaxPayload)})
			return
		}
		if g.inflight >= int(c.srv.cfg.MaxInflight) || !g.fits(r) {
			g.blocked = true // replies sent give back room
			return
		}
		if write && r.Length <= directMin && len(b) < nbd.RequestLen+int(r.Length) {
			return // a small payload not all here: receive more into the staging buffer
		}
		g.rcv.Consume(nbd.RequestLen)
		q := c.newReq(r)
		g.inflight++
		if write {
			c.getBuf(q, uint64(r.Length), r.Offset, r.Length)
			done, err := g.rcv.ReadInto(q.data, g.getSQE)
			if err != nil {
				g.release(q)
				g.stopReading(fmt.Errorf("read WRITE payload: %w", io.ErrUnexpectedEOF))
				return
			}
			if !done {
				g.pend = q // dispatched when the payload is in (onRecv)
				return
			}
		}
		c.dispatch(q)
	}
}

// fits: the buffer r needs stays within MaxBufferBytes (always true with
// nothing held, so that one large request can always go).
func (g *nbdRing) fits(r nbd.Request) bool {
	if r.Type != nbd.CmdRead && r.Type != nbd.CmdWrite {
		return true
	}
	c := g.c
	n := int64(r.Length) + 2*int64(c.lbs) // an unaligned READ's covering blocks
	c.bufMu.Lock()
	ok := c.bufUsed == 0 || c.bufUsed+n <= c.bufMax
	c.bufMu.Unlock()
	return ok
}

func (g *nbdRing) onRecv(res int32) {
	direct, err := g.rcv.Complete(res, g.getSQE)
	if !g.reading {
		if g.pend != nil && !g.rcv.Busy() {
			q := g.pend
			g.pend = nil
			g.release(q)
		}
		return
	}
	if err != nil {
		switch {
		case !errors.Is(err, ringio.ErrClosed):
			g.stopReading(err)
		case g.pend != nil || len(g.rcv.Buffered()) > 0:
			g.stopReading(fmt.Errorf("read request: %w", io.ErrUnexpectedEOF))
		default:
			g.stopReading(fmt.Errorf("read request: %w", io.EOF))
		}
		if g.pend != nil && !g.rcv.Busy() {
			q := g.pend
			g.pend = nil
			g.release(q)
		}
		return
	}
	if direct {
		q := g.pend
		g.pend = nil
		g.c.dispatch(q)
	}
}

// start executes a storage operation for q: on the ring, inline for a
// memory file, or on a helper goroutine.
func (g *nbdRing) start(q *nbdReq, op backend.Op, flags backend.Flags, off uint64, buf []byte, n uint32) {
	c := g.c
	f := c.exp.file
	q.br = backend.Request{Op: op, Flags: flags, Off: off, Buf: buf, Length: n}
	g.ops++
	if (c.exp.inline || f.Buffered() && op == backend.OpWrite && flags&backend.FlagFUA == 0) && c.srv.cfg.ioDelay == 0 {
		// pread/pwrite on tmpfs, and a buffered write (without FUA: that
		// would wait for the disk) into the page cache: a copy, cheaper
		// here than io_uring's punt of it to an io-wq thread and back.
		g.ops--
		c.result(q, f.Sync(op, flags, off, buf, n))
		g.queue(q)
		return
	}
	if f.NeedsSync(op, flags) || c.srv.cfg.ioDelay > 0 {
		g.toHelper(q)
		return
	}
	slot := g.slots.put(q)
	s := g.getSQE()
	f.Prep(s, op, flags, off, buf, n)
	s.SetUserData(kindDisk<<kindShift | uint64(slot))
}

func (g *nbdRing) onDisk(slot uint32, res int32) {
	q := g.slots.take(slot)
	b := &q.br
	step, err := g.c.exp.file.Result(b.Op, b.Flags, b.Off, b.Length, res)
	if step == backend.StepSync {
		g.toHelper(q)
		return
	}
	g.ops--
	g.c.result(q, err)
	g.queue(q)
}

// toHelper hands q to a sync helper, starting one when every running one
// is busy and the bound allows. The channel holds every request the
// connection can have (MaxInflight), so the send never blocks.
func (g *nbdRing) toHelper(q *nbdReq) {
	if g.syncQ == nil {
		g.syncQ = make(chan *nbdReq, g.c.srv.cfg.MaxInflight)
	}
	q.syncHelper = true
	g.syncBusy++
	if g.syncBusy > g.helpers && g.helpers < nbdSyncHelpers {
		g.helpers++
		g.helperWG.Add(1)
		go g.helper()
	}
	g.syncQ <- q
}

func (g *nbdRing) helper() {
	defer g.helperWG.Done()
	c := g.c
	f := c.exp.file
	for q := range g.syncQ {
		if d := c.srv.cfg.ioDelay; d > 0 {
			time.Sleep(d)
		}
		b := &q.br
		c.result(q, f.Sync(b.Op, b.Flags, b.Off, b.Buf, b.Length))
		g.post(q)
	}
}

// flushOut starts one WRITEV of the queued replies if none is in flight.
func (g *nbdRing) flushOut() {
	if len(g.out) == 0 || g.snd.Busy() || g.broken {
		return
	}
	n := min(len(g.out), nbdMaxBatch)
	iov := g.iov[:0]
	for _, q := range g.out[:n] {
		iov = g.c.appendReply(iov, q)
	}
	g.flight = append(g.flight[:0], g.out[:n]...)
	rest := copy(g.out, g.out[n:])
	clear(g.out[rest:])
	g.out = g.out[:rest]
	g.snd.Queue(iov...)
	clear(iov)
	g.iov = iov[:0]
	g.snd.Flush(g.getSQE)
}

func (g *nbdRing) onSend(res int32) {
	done, err := g.snd.Complete(res, g.getSQE)
	g.sendGen++
	if err != nil {
		g.releaseFlight()
		if !g.broken && !g.shut {
			g.c.log.Info("NBD connection lost while replying", zap.Error(err))
		}
		g.breakSend()
		return
	}
	if done {
		g.releaseFlight()
	}
}

func (g *nbdRing) releaseFlight() {
	for i, q := range g.flight {
		g.release(q)
		g.flight[i] = nil
	}
	g.flight = g.flight[:0]
}

// teardown closes everything once the loop is quiet.
func (g *nbdRing) teardown() {
	g.xmu.Lock()
	g.xclosed = true
	g.xmu.Unlock()
	if g.syncQ != nil {
		close(g.syncQ)
	}
	g.helperWG.Wait()
	g.c.syncWG.Wait() // rmw goroutines: none left (ops == 0), but be sure
	unix.Close(g.fd)
	unix.Close(g.efd)
	g.ring.Close()
	g.ring = nil
}

// leakedNBD keeps what a broken ring may still write into referenced
// forever.
var leakedNBD struct {
	mu    sync.Mutex
	rings []*nbdRing
}

func (g *nbdRing) leak() {
	unix.Shutdown(g.fd, unix.SHUT_RDWR) //nolint:errcheck
	g.xmu.Lock()
	g.xclosed = true
	g.xmu.Unlock()
	leakedNBD.mu.Lock()
	leakedNBD.rings = append(leakedNBD.rings, g)
	leakedNBD.mu.Unlock()
}
