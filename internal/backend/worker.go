//go:build linux

package backend

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dst-dev/dst/internal/uring"
	"golang.org/x/sys/unix"
)

// Request is one operation for a Worker. Requests belong to the caller,
// who allocates them once and reuses them (pool them): between Submit and
// the call of Done the Worker owns the Request and its Buf, and the caller
// must not touch either; once Done is called they are the caller's again
// (Done itself may resubmit the Request).
type Request struct {
	File   *File
	Op     Op
	Flags  Flags
	Off    uint64
	Buf    []byte // read target / write source, len(Buf) >= Length; page-aligned for O_DIRECT
	Length uint32
	// Done is called on the Worker's goroutine when the request is
	// finished, with nil or an error wrapping an errno (see Errno). It must
	// not block: hand results to other goroutines through buffered channels
	// or similar. It must not call Worker.Close.
	Done func(req *Request, err error)
	// Ctx is for the caller (a pointer to its own per-request state: a
	// pointer stored in an interface does not allocate).
	Ctx any

	busy atomic.Bool // between Submit and Done
	slot uint32
	err  error // result of the synchronous path
}

// Worker runs requests on its own io_uring for callers that have no ring:
// one goroutine, locked to its OS thread, owns a SingleIssuer/DeferTaskrun
// ring, sleeps in io_uring_enter and wakes either for completions or
// through an eventfd whose read it keeps armed on the ring. Submit may be
// called from any goroutine.
//
// Backpressure: at most depth requests are in the kernel at once; up to
// QueueLen more wait in a bounded queue. Submit blocks while that queue is
// full, i.e. for at most the time the disk needs to finish a request. As
// long as the caller has at most QueueLen requests outstanding (submitted,
// Done not yet returned) Submit never blocks, which also makes resubmitting
// from Done safe.
//
// Requests that need the synchronous path (Result's StepSync) run on one
// helper goroutine; their Done still runs on the Worker's goroutine.
type Worker struct {
	depth    int
	q        chan *Request
	pending  atomic.Int64 // requests sent on q and not yet received (may dip below 0)
	sleeping atomic.Bool  // the worker is about to block or blocked in io_uring_enter
	stopping atomic.Bool

	// Submit announces itself in submitters before it checks closed; Close
	// sets closed, then waits for submitters to drain (the ring goroutine
	// keeps running meanwhile, so a blocked Submit finishes).
	submitters atomic.Int64
	closed     atomic.Bool

	efd     int
	wakeVal *uint64 // the armed eventfd read writes here

	syncQ    chan *Request // to the helper
	syncDone chan *Request // back from the helper

	done       chan struct{} // the ring goroutine has exited
	helperDone chan struct{}
	loopErr    error
	closeOnce  sync.Once

	// Counters kept by the ring goroutine; read them only after Close.
	enters   uint64 // io_uring_enter calls (Submit or SubmitAndWait)
	prepared uint64 // request SQEs prepared
	maxBatch int    // most request SQEs submitted by one io_uring_enter
}

const (
	udWake   = ^uint64(0)
	udCancel = ^uint64(0) - 1
	// MaxDepth bounds NewWorker's depth.
	MaxDepth = 4096
)

// NewWorker starts a Worker that keeps up to depth requests in flight.
func NewWorker(depth int) (*Worker, error) {
	if depth < 1 || depth > MaxDepth {
		return nil, fmt.Errorf("backend: worker depth %d: need between 1 and %d", depth, MaxDepth)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("backend: eventfd: %w", err)
	}
	w := &Worker{
		depth:      depth,
		q:          make(chan *Request, queueLen(depth)),
		efd:        efd,
		wakeVal:    new(uint64),
		syncQ:      make(chan *Request, depth),
		syncDone:   make(chan *Request, depth),
		done:       make(chan struct{}),
		helperDone: make(chan struct{}),
	}
	ready := make(chan error, 1)
	go w.loop(ready)
	if err := <-ready; err != nil {
		<-w.done
		unix.Close(efd)
		return nil, err
	}
	go w.helper()
	return w, nil
}

func queueLen(depth int) int { return max(4*depth, 64) }

// QueueLen is the capacity of the submission queue (4×depth, at least 64).
func (w *Worker) QueueLen() int { return cap(w.q) }

// Depth is the number of requests the Worker keeps in flight.
func (w *Worker) Depth() int { return w.depth }

// Submit queues req. It returns ErrClosed after Close, ErrBusy if req is
// still in flight, and EINVAL without a Done func; Done is then not
// called. Otherwise Done will be called exactly once. Requests that fail
// Check complete through Done with the Check error, without reaching the
// disk.
func (w *Worker) Submit(req *Request) error {
	if req.Done == nil {
		return refuse(unix.EINVAL, "request without a Done function")
	}
	w.submitters.Add(1)
	defer w.submitters.Add(-1)
	if w.closed.Load() {
		return ErrClosed
	}
	if !req.busy.CompareAndSwap(false, true) {
		return ErrBusy
	}
	w.q <- req
	w.pending.Add(1)
	if w.sleeping.Load() && w.sleeping.CompareAndSwap(true, false) {
		w.wake()
	}
	return nil
}

var eventfdOne = [8]byte{1}

func (w *Worker) wake() {
	for {
		_, err := unix.Write(w.efd, eventfdOne[:])
		if err != unix.EINTR {
			return
		}
	}
}

// Close stops accepting requests, waits until every queued and in-flight
// request has completed and its Done has returned (the kernel no longer
// touches any buffer), then stops the Worker's goroutines and waits for
// them. It is idempotent; it must not be called from Done.
func (w *Worker) Close() error {
	w.closeOnce.Do(func() {
		w.closed.Store(true)
		for w.submitters.Load() != 0 {
			time.Sleep(20 * time.Microsecond)
		}
		// No Submit is running now and none will pass the closed check, so
		// everything ever sent on q is in it.
		w.stopping.Store(true)
		w.wake()
		<-w.done
		<-w.helperDone
		unix.Close(w.efd)
	})
	<-w.done
	return w.loopErr // nil unless io_uring_enter failed along the way
}

// helper runs the synchronous path.
func (w *Worker) helper() {
	defer close(w.helperDone)
	for req := range w.syncQ {
		req.err = req.File.Sync(req.Op, req.Flags, req.Off, req.Buf, req.Length)
		w.syncDone <- req // capacity depth: never blocks
		w.wake()
	}
}

// ringState is owned by the Worker's goroutine.
type ringState struct {
	w        *Worker
	ring     *uring.Ring
	slots    []*Request
	free     []uint32
	cq       []uring.CQE
	armed    bool // eventfd read in the kernel
	inflight int  // slots in use (ring or helper)
}

func (w *Worker) loop(ready chan<- error) {
	defer close(w.done)
	uring.LockThread() // never unlocked: the thread exits with the goroutine
	entries := uring.RoundPow2(uint32(w.depth + 2))
	ring, err := uring.New(uring.Options{Entries: entries, SingleIssuer: true, DeferTaskrun: true})
	if err != nil {
		ready <- fmt.Errorf("backend: worker ring: %w", err)
		close(w.syncQ)
		return
	}
	s := &ringState{
		w:     w,
		ring:  ring,
		slots: make([]*Request, w.depth),
		free:  make([]uint32, w.depth),
		cq:    make([]uring.CQE, 2*entries),
	}
	for i := range s.free {
		s.free[i] = uint32(w.depth - 1 - i)
	}
	ready <- nil
	s.run()
	s.shutdown()
	close(w.syncQ)
}

func (s *ringState) run() {
	w := s.w
	for {
		if !s.armed {
			sqe := s.ring.GetSQE()
			sqe.PrepReadEventfd(w.efd, w.wakeVal)
			sqe.SetUserData(udWake)
			s.armed = true
		}
		s.drainSyncDone()
		w.maxBatch = max(w.maxBatch, s.take())
		if w.stopping.Load() && s.inflight == 0 && len(w.q) == 0 {
			return
		}
		// Block in io_uring_enter until a completion; other goroutines
		// wake us through the eventfd, but only if we said we sleep (and
		// only when we have room for their requests).
		block := true
		if len(s.free) > 0 {
			w.sleeping.Store(true)
			if w.pending.Load() > 0 || len(w.syncDone) > 0 || w.stopping.Load() {
				w.sleeping.Store(false)
				block = false
			}
		}
		var err error
		w.enters++
		if block {
			_, err = s.ring.SubmitAndWait(1)
			w.sleeping.Store(false)
		} else {
			_, err = s.ring.Submit()
		}
		if err != nil {
			// io_uring_enter retries EINTR itself; anything else means a
			// broken ring. Requests in flight may still own buffers, so
			// giving up is not an option: remember the error for Close,
			// back off and keep reaping.
			if w.loopErr == nil {
				w.loopErr = fmt.Errorf("backend: worker ring: %w", err)
			}
			time.Sleep(time.Millisecond)
		}
		s.reap()
	}
}

// take moves queued requests onto the ring while there are free slots and
// returns how many SQEs it prepared.
func (s *ringState) take() (n int) {
	w := s.w
	for len(s.free) > 0 {
		var req *Request
		select {
		case req = <-w.q:
		default:
			return n
		}
		w.pending.Add(-1)
		if req.File == nil {
			s.finish(req, refuse(unix.EBADF, "%s request without a File", req.Op))
			continue
		}
		if err := req.File.Check(req.Op, req.Flags, req.Off, req.Length); err != nil {
			s.finish(req, err)
			continue
		}
		if (req.Op == OpRead || req.Op == OpWrite) && len(req.Buf) < int(req.Length) {
			s.finish(req, refuse(unix.EINVAL, "%s of %d bytes with a %d-byte buffer", req.Op, req.Length, len(req.Buf)))
			continue
		}
		slot := s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
		s.slots[slot] = req
		req.slot = slot
		s.inflight++
		sqe := s.ring.GetSQE()
		if sqe == nil { // cannot happen: the SQ holds depth+2 entries
			s.ring.Submit()
			sqe = s.ring.GetSQE()
		}
		req.File.Prep(sqe, req.Op, req.Flags, req.Off, req.Buf, req.Length)
		sqe.SetUserData(uint64(slot))
		w.prepared++
		n++
	}
	return n
}

func (s *ringState) reap() {
	for {
		n := s.ring.Reap(s.cq)
		if n == 0 {
			return
		}
		for i := range s.cq[:n] {
			c := &s.cq[i]
			switch c.UserData {
			case udWake:
				s.armed = false
				continue
			case udCancel:
				continue
			}
			req := s.slots[c.UserData]
			step, err := req.File.Result(req.Op, req.Flags, req.Off, req.Length, c.Res)
			if step == StepSync {
				s.w.syncQ <- req // capacity depth: never blocks
				continue
			}
			s.release(req)
			s.finish(req, err)
		}
	}
}

func (s *ringState) drainSyncDone() {
	for {
		select {
		case req := <-s.w.syncDone:
			err := req.err
			req.err = nil
			s.release(req)
			s.finish(req, err)
		default:
			return
		}
	}
}

func (s *ringState) release(req *Request) {
	s.slots[req.slot] = nil
	s.free = append(s.free, req.slot)
	s.inflight--
}

func (s *ringState) finish(req *Request, err error) {
	req.busy.Store(false)
	req.Done(req, err)
}

// shutdown cancels the armed eventfd read and waits for it, so the kernel
// writes into nothing after the ring is gone, then closes the ring.
func (s *ringState) shutdown() {
	if s.armed {
		sqe := s.ring.GetSQE()
		if sqe == nil {
			s.ring.Submit()
			sqe = s.ring.GetSQE()
		}
		sqe.PrepCancel(udWake)
		sqe.SetUserData(udCancel)
		for s.armed {
			n, err := s.ring.Wait(s.cq, -1)
			if err != nil && n == 0 {
				break
			}
			for _, c := range s.cq[:n] {
				if c.UserData == udWake {
					s.armed = false
				}
			}
		}
	}
	s.ring.Close()
}
