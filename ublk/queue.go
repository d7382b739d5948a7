//go:build linux

package ublk

// One goroutine per hardware queue, locked to its OS thread, owns the
// queue's io_uring ring and is the only one to touch it:
//
//   serial (queue goroutine):  reap CQEs -> hand requests to the handler
//                              -> drain completions -> queue COMMITs
//                              -> one io_uring_enter (submit + wait)
//   parallel (any goroutine):  Complete(tag) appends to a locked list and,
//                              unless a wake-up is already pending, writes
//                              the eventfd whose read is armed on the ring.
//
// user_data: bits 62-63 say what completed; the low bits are the tag, or
// the handler's own value for RingHandler SQEs.

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/uring"
)

const (
	kindShift    = 62
	userMask     = 1<<kindShift - 1
	kindCmd      = 0 // FETCH / COMMIT_AND_FETCH completion; low bits = tag
	kindWake     = 1 // eventfd read
	kindTarget   = 2 // handler SQE
	kindUserCopy = 3 // USER_COPY data transfer; low bits = tag
)

// tag states
const (
	tagFetching = iota // FETCH or COMMIT_AND_FETCH outstanding in the kernel
	tagHandling        // with the handler
	tagCopying         // USER_COPY transfer outstanding
	tagAborted         // the kernel aborted the fetch: device stopping
	tagParked          // arrived while detaching: left to the next daemon
)

type queue struct {
	id       uint16
	depth    int
	maxIO    int
	userCopy bool
	charFd   int
	devID    uint32

	ring    *uring.Ring
	descs   []byte // read-only mmap of the kernel's descriptors
	bufs    []byte // depth*maxIO bytes, mmap
	reqs    []Request
	state   []uint8
	results []int32
	cqes    []uring.CQE
	// Metrics (Device.IO): started[tag] is when the request of tag was
	// handed out; io is updated by this goroutine only, read at scrapes.
	// now is read once per batch: when the wait returns (the requests of
	// the batch start then) and before the completions are committed.
	started []int64
	io      *metrics.IO
	now     int64

	port    port
	handler QueueHandler
	ringH   RingHandler
	flusher Flusher
	stopper Stopper
	stopped bool
	ctx     QueueContext

	// Completions from other goroutines.
	cmu         sync.Mutex
	done        []uint16
	spare       []uint16
	dispatching atomic.Bool
	wakePending atomic.Bool
	stop        atomic.Bool
	efd         int
	efdVal      uint64

	// Detaching (Device.Detach, for a later Recover): requests that
	// arrive are parked, never started nor committed, and the kernel
	// reissues them to the next daemon; the loop ends once the handler
	// holds nothing (detachReq), or at once (abandonReq).
	detachReq  atomic.Bool
	abandonReq atomic.Bool
	detaching  bool

	aborted int // tags whose fetch the kernel aborted
	held    int // tags handed out and not yet committed
	parked  int // tags parked while detaching
	err     error
}

func newQueue(id uint16, depth, maxIO int, userCopy bool, charFd int, devID uint32) *queue {
	q := &queue{
		id: id, depth: depth, maxIO: maxIO, userCopy: userCopy,
		charFd: charFd, devID: devID, efd: -1, port: kernelPort{},
		reqs:    make([]Request, depth),
		state:   make([]uint8, depth),
		results: make([]int32, depth),
		started: make([]int64, depth),
		io:      new(metrics.IO),
		done:    make([]uint16, 0, depth),
		spare:   make([]uint16, 0, depth),
		cqes:    make([]uring.CQE, 2*depth+4),
	}
	q.ctx = QueueContext{ID: id, Depth: uint16(depth), q: q}
	return q
}

// setup runs on the locked queue goroutine: mmap, ring, handler, FETCHes.
func (q *queue) setup(t Target) error {
	// The queue thread serves I/O for a block device; if memory reclaim
	// writes to that device, the thread must not itself be throttled by it.
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("queue %d: prctl(PR_SET_IO_FLUSHER): %w", q.id, err)
	}
	if err := q.port.open(q); err != nil {
		return fmt.Errorf("queue %d: %w", q.id, err)
	}
	var err error
	q.bufs, err = unix.Mmap(-1, 0, q.depth*q.maxIO, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("queue %d: allocate %d tag buffers of %d bytes: %w", q.id, q.depth, q.maxIO, err)
	}
	entries := uring.RoundPow2(uint32(3*q.depth + 2))
	q.ring, err = uring.New(uring.Options{Entries: entries, SingleIssuer: true, DeferTaskrun: true})
	if err != nil {
		return fmt.Errorf("queue %d: %w", q.id, err)
	}
	q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("queue %d: eventfd: %w", q.id, err)
	}
	h, err := t.NewQueue(&q.ctx)
	if err != nil {
		return fmt.Errorf("queue %d: target: %w", q.id, err)
	}
	q.handler = h
	q.ringH, _ = h.(RingHandler)
	q.flusher, _ = h.(Flusher)
	q.stopper, _ = h.(Stopper)
	q.armWake()
	for tag := range q.depth {
		q.state[tag] = tagFetching
		q.port.prepFetch(q, uint16(tag), false, 0)
	}
	// FETCH completes as task work, which a DEFER_TASKRUN ring only runs
	// when this thread enters the ring: submit now, so that START_DEV (sent
	// from the control goroutine) sees every tag ready.
	if _, err := q.ring.Submit(); err != nil {
		return fmt.Errorf("queue %d: submit FETCH_REQ: %w", q.id, err)
	}
	return nil
}

// run serves requests until the device stops (every tag aborted) or stop
// is requested. It returns with every handed-out request completed.
func (q *queue) run() {
	for {
		if q.finished() {
			if q.detaching {
				// The last commits are still in the SQ: hand them to the
				// kernel, or it would reissue requests already done.
				if _, err := q.ring.Submit(); err != nil && q.err == nil {
					q.err = fmt.Errorf("queue %d: submit the last commits: %w", q.id, err)
				}
			}
			return
		}
		n, err := q.ring.Wait(q.cqes, -1)
		if err != nil {
			q.err = fmt.Errorf("queue %d: wait: %w", q.id, err)
			return
		}
		q.now = metrics.Now()
		q.dispatching.Store(true)
		for i := range n {
			q.handleCQE(&q.cqes[i])
		}
		if q.flusher != nil {
			q.flusher.Flush()
		}
		q.dispatching.Store(false)
		q.drain()
	}
}

func (q *queue) finished() bool {
	if q.detachReq.Load() {
		q.detaching = true
	}
	if q.detaching {
		return q.detached()
	}
	if q.stopper != nil && !q.stopped && (q.stop.Load() || q.aborted == q.depth) {
		// The device is going away: let the handler wind down its own
		// work on the ring; its completions keep the loop turning.
		q.stopped = true
		q.dispatching.Store(true)
		q.stopper.Stop()
		q.dispatching.Store(false)
		q.drain()
	}
	if q.stop.Load() {
		// Forced stop (setup failure or a device that never started): leave
		// as soon as nothing we handed out is still running.
		return q.busy() == 0
	}
	return q.aborted == q.depth && q.busy() == 0
}

// detached decides the end of a detaching queue: nothing committed after
// an abandon, and otherwise once every request the handler held has been
// committed and its own work on the ring (a connection's goodbye) is done.
func (q *queue) detached() bool {
	if q.abandonReq.Load() {
		return true
	}
	if q.held > 0 {
		return false
	}
	if q.stopper != nil && !q.stopped {
		q.stopped = true
		q.dispatching.Store(true)
		q.stopper.Stop()
		q.dispatching.Store(false)
		q.drain()
	}
	return q.busy() == 0
}

// busy counts requests the handler or a data copy still holds, and the
// handler's own SQEs in flight.
func (q *queue) busy() int {
	n := q.held
	if q.ringH != nil {
		n += q.ringH.Inflight()
	}
	return n
}

func (q *queue) handleCQE(c *uring.CQE) {
	switch c.UserData >> kindShift {
	case kindCmd:
		tag := uint16(c.UserData)
		switch res := q.port.result(q, tag, c.Res); {
		case res == ioResOK:
			q.startRequest(tag)
		case res == ioResAbort:
			q.state[tag] = tagAborted
			q.aborted++
		default:
			// The kernel refused our command: a bug on our side or a dying
			// device. The tag cannot be fetched again.
			if q.err == nil {
				q.err = fmt.Errorf("queue %d tag %d: FETCH/COMMIT refused: %w", q.id, tag, syscall.Errno(-res))
			}
			q.state[tag] = tagAborted
			q.aborted++
		}
	case kindWake:
		q.wakePending.Store(false)
		q.armWake()
	case kindTarget:
		if q.ringH != nil {
			q.ringH.HandleCQE(c)
		}
	case kindUserCopy:
		q.userCopyDone(uint16(c.UserData), c.Res)
	}
}

// startRequest decodes the descriptor of tag and hands the request over.
func (q *queue) startRequest(tag uint16) {
	d := (*ioDesc)(unsafe.Pointer(&q.descs[int(tag)*sizeofIODesc]))
	r := &q.reqs[tag]
	op := d.opFlags & 0xff
	r.Flags = 0
	if d.opFlags&ioFlagFUA != 0 {
		r.Flags |= FlagFUA
	}
	if d.opFlags&ioFlagNoUnmap != 0 {
		r.Flags |= FlagNoUnmap
	}
	r.Offset = d.startSector << sectorShift
	r.Length = d.nrSectors << sectorShift
	r.Queue, r.Tag = q.id, tag
	r.Buf = nil
	if q.detaching || q.detachReq.Load() {
		// Not ours any more: the kernel hands it to the next daemon
		// (USER_RECOVERY_REISSUE).
		q.detaching = true
		q.state[tag] = tagParked
		q.parked++
		return
	}
	q.state[tag] = tagHandling
	q.held++
	switch op {
	case opRead:
		r.Op = OpRead
	case opWrite:
		r.Op = OpWrite
	case opFlush:
		r.Op = OpFlush
	case opDiscard:
		r.Op = OpDiscard
	case opWriteZeroes:
		r.Op = OpWriteZeroes
	default:
		r.Op = 0
		q.Complete(tag, syscall.EOPNOTSUPP)
		return
	}
	q.started[tag] = q.now
	q.io.Start()
	if r.Op == OpRead || r.Op == OpWrite {
		if int(r.Length) > q.maxIO {
			q.Complete(tag, syscall.EINVAL)
			return
		}
		off := int(tag) * q.maxIO
		r.Buf = q.bufs[off : off+int(r.Length) : off+int(r.Length)]
		if q.userCopy && r.Op == OpWrite {
			// Fetch the data from the kernel first.
			q.state[tag] = tagCopying
			s := q.getSQE()
			s.PrepRead(q.charFd, r.Buf, uint64(userCopyOff(q.id, tag)))
			s.SetUserData(kindUserCopy<<kindShift | uint64(tag))
			return
		}
	}
	q.handler.Handle(r)
}

func (q *queue) userCopyDone(tag uint16, res int32) {
	r := &q.reqs[tag]
	if r.Op == OpWrite {
		if res != int32(r.Length) {
			q.state[tag] = tagHandling
			q.Complete(tag, syscall.EIO)
			return
		}
		q.state[tag] = tagHandling
		q.handler.Handle(r)
		return
	}
	// READ data went to the kernel: commit.
	if res != int32(r.Length) {
		res = -int32(syscall.EIO)
	}
	q.commit(tag, res)
}

// Complete records the result of tag; see Completer.
func (q *queue) Complete(tag uint16, err syscall.Errno) {
	res := -int32(err)
	if err == 0 {
		res = 0
		if op := q.reqs[tag].Op; op == OpRead || op == OpWrite {
			res = int32(q.reqs[tag].Length)
		}
	}
	q.cmu.Lock()
	q.results[tag] = res
	q.done = append(q.done, tag)
	// On the queue goroutine (dispatching) the list is drained before the
	// next wait; elsewhere wake the queue unless a wake-up is on its way.
	// The write happens under the lock so that the queue cannot drain this
	// completion, exit, and have its eventfd closed before the write.
	if !q.dispatching.Load() && q.wakePending.CompareAndSwap(false, true) {
		q.wake()
	}
	q.cmu.Unlock()
}

// Wake makes the queue goroutine go round its loop (and call the
// handler's Flush) soon.
func (q *queue) Wake() {
	q.cmu.Lock()
	if q.wakePending.CompareAndSwap(false, true) {
		q.wake()
	}
	q.cmu.Unlock()
}

func (q *queue) wake() {
	one := uint64(1)
	unix.Write(q.efd, (*[8]byte)(unsafe.Pointer(&one))[:]) //nolint:errcheck // a full counter still wakes
}

// requestDetach makes the queue park new requests and return from run
// once the handler holds nothing; requestAbandon makes it return at once,
// without committing anything more.
func (q *queue) requestDetach() {
	q.detachReq.Store(true)
	q.Wake()
}

func (q *queue) requestAbandon() {
	q.abandonReq.Store(true)
	q.detachReq.Store(true)
	q.Wake()
}

// requestStop makes run return once nothing handed out is still running.
func (q *queue) requestStop() {
	q.stop.Store(true)
	q.wakePending.Store(true)
	q.wake()
}

func (q *queue) armWake() {
	s := q.getSQE()
	s.PrepReadEventfd(q.efd, &q.efdVal)
	s.SetUserData(kindWake << kindShift)
}

// drain turns completions into COMMIT_AND_FETCH_REQ entries.
func (q *queue) drain() {
	q.cmu.Lock()
	done := q.done
	q.done = q.spare[:0]
	q.cmu.Unlock()
	if len(done) > 0 {
		q.now = metrics.Now()
	}
	for _, tag := range done {
		res := q.results[tag]
		r := &q.reqs[tag]
		if q.userCopy && r.Op == OpRead && res > 0 {
			q.state[tag] = tagCopying
			s := q.getSQE()
			s.PrepWrite(q.charFd, r.Buf[:res], uint64(userCopyOff(q.id, tag)), 0)
			s.SetUserData(kindUserCopy<<kindShift | uint64(tag))
			continue
		}
		q.commit(tag, res)
	}
	q.spare = done[:0]
}

// commit completes the block request and re-arms the tag in one command.
func (q *queue) commit(tag uint16, res int32) {
	if r := &q.reqs[tag]; r.Op != 0 {
		// ublk's ops are numbered as metrics' from 1.
		q.io.Done(metrics.Op(r.Op-1), r.Length, q.now-q.started[tag], res < 0)
	}
	q.held--
	q.state[tag] = tagFetching
	q.port.prepFetch(q, tag, true, res)
	q.reqs[tag].Buf = nil
}

// port is the queue's link to the ublk driver. kernelPort issues FETCH and
// COMMIT_AND_FETCH commands on /dev/ublkcN; the host tests substitute a
// fake kernel so that this loop runs, unchanged, where ublk does not exist.
type port interface {
	open(q *queue) error // map the descriptor array into q.descs
	// prepFetch queues FETCH_REQ (commit false) or COMMIT_AND_FETCH_REQ
	// with res for tag; its CQE carries kindCmd|tag.
	prepFetch(q *queue, tag uint16, commit bool, res int32)
	// result turns a kindCmd CQE result into ioResOK, ioResAbort or -errno.
	result(q *queue, tag uint16, res int32) int32
	close(q *queue)
}

type kernelPort struct{}

func (kernelPort) open(q *queue) error {
	page := os.Getpagesize()
	var err error
	q.descs, err = unix.Mmap(q.charFd, int64(q.id)*descStride(page), descLen(q.depth, page),
		unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap descriptors: %w", err)
	}
	return nil
}

func (kernelPort) prepFetch(q *queue, tag uint16, commit bool, res int32) {
	op := uint32(ioFetchReq)
	if commit {
		op = ioCommitAndFetchReq
	}
	s := q.getSQE()
	s.PrepURingCmd(q.charFd, op)
	var addr uint64
	if !q.userCopy {
		addr = uint64(uintptr(unsafe.Pointer(&q.bufs[int(tag)*q.maxIO])))
	}
	putIOCmd(s.Cmd16(), q.id, tag, res, addr)
	s.SetUserData(kindCmd<<kindShift | uint64(tag))
}

func (kernelPort) result(_ *queue, _ uint16, res int32) int32 { return res }

func (kernelPort) close(q *queue) {
	if q.descs != nil {
		unix.Munmap(q.descs)
		q.descs = nil
	}
}

// getSQE never fails: with a full SQ it submits what is queued (the kernel
// consumes SQEs at submit) and takes the freed entry.
func (q *queue) getSQE() *uring.SQE {
	for {
		if s := q.ring.GetSQE(); s != nil {
			return s
		}
		if _, err := q.ring.Submit(); err != nil {
			// Only a broken ring fails here; keep trying is pointless.
			panic(fmt.Sprintf("ublk: queue %d: ring submit failed with a full SQ: %v", q.id, err))
		}
	}
}

// closeWake closes the eventfd. The queue's owner calls it after the queue
// goroutine has exited, when nothing can call Complete any more: closing it
// earlier could let a late wake-up write into a reused descriptor.
func (q *queue) closeWake() {
	if q.efd >= 0 {
		unix.Close(q.efd)
		q.efd = -1
	}
}

// teardown runs on the queue goroutine after run returns.
func (q *queue) teardown() {
	if q.handler != nil {
		q.handler.Close()
	}
	if q.ring != nil {
		q.ring.Close() // cancels whatever fetches are still parked
	}
	q.port.close(q)
	if q.bufs != nil && q.held == 0 {
		// An abandoned queue leaves the buffers of the requests its target
		// still holds mapped: the target may write into them until it
		// gives up, and the process is on its way out anyway.
		unix.Munmap(q.bufs)
	}
}
