package export

import (
	"sync"
	"sync/atomic"

	"github.com/dst-dev/dst/internal/backend"
)

// executor feeds ops to a backend.Worker without ever blocking the
// caller. Worker.Submit blocks when its queue is full, and Submit is called
// under a session lock that the Worker's Done callbacks also take, so a
// blocking Submit could deadlock. The executor therefore hands at most
// QueueLen ops to the Worker at once (then Submit never blocks, by the
// Worker's contract) and parks the rest in a FIFO; each completion takes
// the next parked op and submits it from Done, which the Worker allows.
// The FIFO is bounded by what the connections may have admitted
// (MaxInflight and MaxBufferBytes each).
type executor struct {
	w *backend.Worker

	mu       sync.Mutex
	free     int   // Submit slots left (QueueLen when idle)
	overflow []*op // parked, FIFO from head
	head     int
	hold     bool // tests: park everything until unhold

	pending sync.WaitGroup // ops submitted and not completed
	ops     atomic.Int64   // the same, readable (tests, logs)
}

func newExecutor(depth int) (*executor, error) {
	w, err := backend.NewWorker(depth)
	if err != nil {
		return nil, err
	}
	return &executor{w: w, free: w.QueueLen()}, nil
}

// submit hands o to the Worker, or parks it. It never blocks.
func (e *executor) submit(o *op) {
	o.ex = e
	e.pending.Add(1)
	e.ops.Add(1)
	e.mu.Lock()
	if e.free == 0 || e.hold || e.head < len(e.overflow) {
		e.overflow = append(e.overflow, o)
		e.mu.Unlock()
		return
	}
	e.free--
	e.mu.Unlock()
	e.start(o)
}

func (e *executor) start(o *op) {
	if err := e.w.Submit(&o.req); err != nil {
		// Only after Close, which waits for every op first: cannot
		// happen. Complete the op with the error rather than lose it,
		// on a goroutine (start may run under the op's session lock);
		// pending, which close waits for, owns it.
		go o.complete(&o.req, err)
	}
}

// next is called at the start of every op's Done: it passes the
// completed op's slot to a parked op, or frees it.
func (e *executor) next() {
	e.mu.Lock()
	if !e.hold && e.head < len(e.overflow) {
		o := e.overflow[e.head]
		e.overflow[e.head] = nil
		e.head++
		if e.head == len(e.overflow) {
			e.overflow, e.head = e.overflow[:0], 0
		}
		e.mu.Unlock()
		e.start(o)
		return
	}
	e.free++
	e.mu.Unlock()
}

// finished is called at the very end of every op's Done.
func (e *executor) finished() {
	e.ops.Add(-1)
	e.pending.Done()
}

// setHold parks every op from now on (on) or submits the parked ones (off).
// For tests: it makes "executing" last as long as a test needs.
func (e *executor) setHold(on bool) {
	e.mu.Lock()
	e.hold = on
	var run []*op
	for !on && e.free > 0 && e.head < len(e.overflow) {
		run = append(run, e.overflow[e.head])
		e.overflow[e.head] = nil
		e.head++
		e.free--
	}
	if e.head == len(e.overflow) {
		e.overflow, e.head = e.overflow[:0], 0
	}
	e.mu.Unlock()
	for _, o := range run {
		e.start(o)
	}
}

// close waits for every submitted op to complete, then stops the Worker.
// No submit may be running or follow.
func (e *executor) close() error {
	e.setHold(false)
	e.pending.Wait()
	return e.w.Close()
}
