package crypto

// The worker pool: parallel sealing and opening with in-order delivery
// (WireGuard's container lock, PROTOCOL.md §8.8).
//
//	serial   (producer, one per Queue): Sealer.Next / Opener.Next, then
//	         Queue.Submit: the job is locked, put on the Queue (ordered)
//	         and on the Pool's work channel (shared by every Queue); a
//	         small job is processed right there instead (inline).
//	parallel (workers, Min..Max of them): take a job, Seal or Open it,
//	         unlock it.
//	serial   (consumer, one per Queue): Queue.Next takes jobs in submission
//	         order and locks each in turn, so it waits for the one a
//	         worker still holds; order is that of Submit.
//
// The pool grows when a job is queued behind as many jobs as there are
// workers, up to Max, and a worker above Min exits after Idle without work.
// Workers block on the channel; nothing polls.

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// PoolConfig sizes a Pool. Zero values take the defaults.
type PoolConfig struct {
	// Min is the number of workers always running (default 1, at least 1).
	Min int
	// Max is the most workers (default GOMAXPROCS, at least Min).
	Max int
	// Backlog is the capacity of the shared work channel (default 1024). A
	// Submit that finds it full waits: back pressure.
	Backlog int
	// Idle is how long a worker above Min waits for work before it exits
	// (default 100ms).
	Idle time.Duration
}

// Pool is a set of workers shared by any number of Queues (for example
// every connection of an exporter).
type Pool struct {
	cfg  PoolConfig
	work chan *Job

	mu     sync.RWMutex // read: dispatching; write: Close
	closed bool

	workers atomic.Int32
	grown   atomic.Uint64
	shrunk  atomic.Uint64
	wg      sync.WaitGroup
}

// NewPool starts a pool with cfg.Min workers.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.Min < 1 {
		cfg.Min = 1
	}
	if cfg.Max <= 0 {
		cfg.Max = runtime.GOMAXPROCS(0)
	}
	cfg.Max = max(cfg.Max, cfg.Min)
	if cfg.Backlog <= 0 {
		cfg.Backlog = 1024
	}
	if cfg.Idle <= 0 {
		cfg.Idle = 100 * time.Millisecond
	}
	p := &Pool{cfg: cfg, work: make(chan *Job, cfg.Backlog)}
	for range cfg.Min {
		p.workers.Add(1)
		p.wg.Add(1)
		go p.worker()
	}
	return p
}

// PoolStats are a Pool's counters.
type PoolStats struct {
	Workers int    // running now
	Grown   uint64 // workers started above Min
	Shrunk  uint64 // workers that exited for being idle
	Queued  int    // jobs waiting for a worker
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	return PoolStats{Workers: int(p.workers.Load()), Grown: p.grown.Load(), Shrunk: p.shrunk.Load(), Queued: len(p.work)}
}

// Close stops the pool: the workers finish every job already queued and
// exit, and Close waits for them. Jobs submitted afterwards are processed
// inline by the submitter, so a Queue's consumer never waits forever.
func (p *Pool) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.work)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Pool) dispatch(j *Job) {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		j.run()
		j.mu.Unlock()
		return
	}
	p.work <- j
	if q := len(p.work); q > 0 && q >= int(p.workers.Load()) {
		p.grow()
	}
	p.mu.RUnlock()
}

// grow starts a worker unless Max are running. Called under p.mu (read),
// so it cannot race with Close's Wait.
func (p *Pool) grow() {
	for {
		n := p.workers.Load()
		if int(n) >= p.cfg.Max {
			return
		}
		if p.workers.CompareAndSwap(n, n+1) {
			p.grown.Add(1)
			p.wg.Add(1)
			go p.worker()
			return
		}
	}
}

// retire lets an idle worker exit unless only Min are running.
func (p *Pool) retire() bool {
	for {
		n := p.workers.Load()
		if int(n) <= p.cfg.Min {
			return false
		}
		if p.workers.CompareAndSwap(n, n-1) {
			p.shrunk.Add(1)
			return true
		}
	}
}

func (p *Pool) worker() {
	defer p.wg.Done()
	idle := time.NewTimer(p.cfg.Idle)
	idle.Stop()
	for {
		// Busy: take the next job without touching the timer.
		select {
		case j, ok := <-p.work:
			if !ok {
				p.workers.Add(-1)
				return
			}
			j.run()
			j.mu.Unlock()
			continue
		default:
		}
		// Nothing queued: sleep until a job or the idle timeout.
		idle.Reset(p.cfg.Idle)
		select {
		case j, ok := <-p.work:
			idle.Stop()
			if !ok {
				p.workers.Add(-1)
				return
			}
			j.run()
			j.mu.Unlock()
		case <-idle.C:
			if p.retire() {
				return
			}
		}
	}
}

// Queue is the ordered queue of one producer and one consumer, for
// example the replies of one exporter connection (sealing) or the requests
// it reads (opening).
type Queue struct {
	p      *Pool
	ch     chan *Job
	inline int
}

// NewQueue returns an ordered queue on p. depth bounds the jobs submitted
// and not yet taken by Next (Submit waits beyond it); jobs whose payload is
// at most inline bytes are processed by the submitter (see DefaultInline;
// -1: never).
func (p *Pool) NewQueue(depth, inline int) *Queue {
	return &Queue{p: p, ch: make(chan *Job, max(depth, 1)), inline: inline}
}

// Submit queues j, whose Frame was just assigned by Next of the Sealer or
// Opener this queue serves: Next and Submit must be called in the same
// order, by one goroutine at a time. j must not be in use (not submitted
// and not yet returned by Next). Submit waits while the queue holds depth
// jobs not yet taken by Next, or the pool's backlog is full: a goroutine
// that is its own consumer (submit a batch, then take it with Next, as a
// writer that seals what it is about to write) must not submit more than
// depth jobs before taking them. Submit after Close panics.
func (q *Queue) Submit(j *Job) {
	if len(j.Payload) <= q.inline {
		j.run()
		q.ch <- j
		return
	}
	j.mu.Lock()
	q.ch <- j
	q.p.dispatch(j)
}

// Next returns the next job in submission order once it is processed, and
// false when the queue is closed and drained. The caller owns the job
// until it submits it again.
func (q *Queue) Next() (*Job, bool) {
	j, ok := <-q.ch
	if !ok {
		return nil, false
	}
	j.Wait()
	return j, true
}

// Jobs returns the ordered channel, for consumers that select on other
// events too: call Wait on each job received before using it.
func (q *Queue) Jobs() <-chan *Job { return q.ch }

// Close tells the consumer that nothing more will be submitted: Next
// returns false once the jobs queued so far are taken.
func (q *Queue) Close() { close(q.ch) }

// Job is one frame to seal or open. The caller allocates jobs once (one
// per transaction slot, say) and reuses them: the pool does not allocate.
//
// Seal jobs: Body == nil: Frame.Seal(Hdr, Payload, Trailer);
// else Frame.SealTo(Hdr, Payload, Body).
// Open jobs: Body == nil: Err = Frame.Open(Hdr, Payload, Trailer);
// else Err = Frame.OpenTo(Hdr, Body, Payload).
// The buffers belong to the job from Submit until Next returns it.
type Job struct {
	Frame   Frame
	Open    bool // open (verify) instead of seal
	Hdr     []byte
	Payload []byte
	Trailer []byte
	Body    []byte
	// Err is the result of an open: nil, ErrCorrupt or ErrAuth.
	Err error
	// Data is the caller's (for example the transaction the frame belongs
	// to).
	Data any

	mu sync.Mutex // the container lock: held from Submit until processed
}

// Wait blocks until j is processed.
func (j *Job) Wait() {
	j.mu.Lock()
	j.mu.Unlock() //nolint:staticcheck // the lock is the signal
}

func (j *Job) run() {
	f := &j.Frame
	switch {
	case j.Open && j.Body != nil:
		j.Err = f.OpenTo(j.Hdr, j.Body, j.Payload)
	case j.Open:
		j.Err = f.Open(j.Hdr, j.Payload, j.Trailer)
	case j.Body != nil:
		f.SealTo(j.Hdr, j.Payload, j.Body)
		j.Err = nil
	default:
		f.Seal(j.Hdr, j.Payload, j.Trailer)
		j.Err = nil
	}
}

// DefaultInline returns the inline threshold for s, in payload bytes: a
// frame whose payload is at most this size is processed by the submitter.
//
// Handing a frame to a worker and waking the consumer costs about 0.5–2 µs
// on the 2-CPU reference machine (BenchmarkPoolLatency, empty frames), and
// with nothing else in flight it only adds latency; a stream of frames
// gains from the pool once a frame's work is a few times that
// (BenchmarkPool). The thresholds are where one frame's work is about
// 2 µs: 4 KiB frames, the common block I/O, stay inline with every suite.
func DefaultInline(s Suite) int {
	switch s {
	case CRC32C:
		return 32 << 10 // ~17 GB/s
	case AES256GCM:
		return 8 << 10 // ~4 GB/s
	case SHA256, BLAKE3, ChaCha20Poly1305:
		return 4 << 10 // 1–2 GB/s at these sizes
	}
	return math.MaxInt // None: nothing to do but copies
}
