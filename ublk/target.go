package ublk

import (
	"fmt"
	"syscall"

	"github.com/dst-dev/dst/internal/uring"
)

// Op is a block request operation as DST's targets see it.
type Op uint8

const (
	OpRead Op = iota + 1
	OpWrite
	OpFlush
	OpDiscard
	OpWriteZeroes
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpDiscard:
		return "discard"
	case OpWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Flags modify a request.
type Flags uint16

const (
	// FlagFUA: the write must be durable when it completes.
	FlagFUA Flags = 1 << iota
	// FlagNoUnmap: write-zeroes must keep the range allocated.
	FlagNoUnmap
)

// Request is one block request handed to a target. The queue owns the
// Request and its buffer; the target may use both from Handle until it calls
// Complete for the request's tag, and must not touch them afterwards: the
// kernel reuses the tag for the next request at once.
type Request struct {
	Op     Op
	Flags  Flags
	Offset uint64 // bytes; always a multiple of the logical block size
	Length uint32 // bytes
	// Buf is the tag's buffer, len(Buf) == Length, for OpRead (fill it) and
	// OpWrite (read it); nil for other ops. It is page-aligned mmap memory,
	// suitable for O_DIRECT, stable for the device's life.
	Buf   []byte
	Queue uint16
	Tag   uint16
}

// Completer completes requests. Complete may be called from any goroutine,
// once per handed-out request; err 0 is success (the queue fills in the
// byte count the kernel expects), otherwise the errno the block layer sees.
type Completer interface {
	Complete(tag uint16, err syscall.Errno)
}

// Geometry is what a target tells the device about its storage.
type Geometry struct {
	Size              uint64 // bytes, a multiple of LogicalBlockSize
	LogicalBlockSize  uint32 // 512..4096, power of two
	PhysicalBlockSize uint32 // >= LogicalBlockSize (0 = same)
	MaxIOBytes        uint32 // largest request the target accepts (0 = device default)
	ReadOnly          bool   // the target refuses writes
	Rotational        bool
	// VolatileCache: writes may sit in a cache until FLUSH; the kernel then
	// sends FLUSH and FUA. False means every completed write is durable.
	VolatileCache bool
	FUA           bool
	// Discard/WriteZeroes are advertised only when the target really does
	// them; Granularity is the discard unit in bytes.
	Discard, WriteZeroes bool
	DiscardGranularity   uint32
	MaxDiscardBytes      uint64
	MaxWriteZeroesBytes  uint64
}

// Target is a storage implementation behind a ublk device.
type Target interface {
	// Geometry is asked once, before the device is created.
	Geometry() Geometry
	// NewQueue is called once per hardware queue, on that queue's own
	// goroutine (locked to its OS thread), before the queue fetches its
	// first request.
	NewQueue(q *QueueContext) (QueueHandler, error)
	// Close releases the target after every queue has stopped.
	Close() error
	// Describe is a short human description ("null", "file /srv/disk.img").
	Describe() string
}

// QueueHandler serves one hardware queue.
type QueueHandler interface {
	// Handle starts one request. It runs on the queue goroutine and must not
	// block: I/O goes to another goroutine, or onto the queue's ring through
	// QueueContext.GetSQE (see RingHandler). The result comes later (or at
	// once, from inside Handle) through QueueContext.Complete.
	Handle(r *Request)
	// Close is called on the queue goroutine after the queue has stopped and
	// every handed-out request has been completed.
	Close()
}

// RingHandler is a QueueHandler that issues its I/O on the queue's own
// io_uring ring: one ring, one thread, no wake-ups between goroutines. Its
// SQEs carry user data from QueueContext.UserData, and their completions
// come back through HandleCQE on the queue goroutine.
type RingHandler interface {
	QueueHandler
	HandleCQE(c *uring.CQE)
	// Inflight reports SQEs submitted and not yet completed; the queue does
	// not close its ring while it is non-zero.
	Inflight() int
}

// Flusher is a QueueHandler that wants to know when the queue has handed
// over every request of one batch (all that arrived together): Flush runs
// on the queue goroutine after the last Handle of the batch, so a handler
// can send a batch with one system call instead of one per request.
type Flusher interface {
	QueueHandler
	Flush()
}

// Stopper is a QueueHandler with work of its own on the queue's ring
// (a connection, a timer) that it must wind down when the device stops:
// Stop is called once, on the queue goroutine, when the kernel has aborted
// every tag (or a forced stop was asked); the queue then keeps serving the
// handler's CQEs until its Inflight reaches zero.
type Stopper interface {
	RingHandler
	Stop()
}

// QueueContext is the queue's face towards its handler.
type QueueContext struct {
	ID    uint16
	Depth uint16
	q     *queue
}

// Complete completes a request; callable from any goroutine.
func (c *QueueContext) Complete(tag uint16, err syscall.Errno) { c.q.Complete(tag, err) }

// Wake makes the queue goroutine run a loop iteration soon (a Flusher's
// Flush runs in it); callable from any goroutine.
func (c *QueueContext) Wake() { c.q.Wake() }

// GetSQE returns a free SQE on the queue's ring, submitting queued entries
// first when the ring is full. Only a RingHandler may call it, and only on
// the queue goroutine (inside Handle or HandleCQE).
func (c *QueueContext) GetSQE() *uring.SQE { return c.q.getSQE() }

// UserData tags a handler value (< 2^62) so its CQE is routed to
// HandleCQE.
func (c *QueueContext) UserData(v uint64) uint64 { return kindTarget<<kindShift | v&userMask }

// FromUserData recovers the handler value from a routed CQE.
func FromUserData(ud uint64) uint64 { return ud & userMask }
