package export

import (
	"math/bits"
	"sync"
	"unsafe"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/wire"
)

// Data buffers
//
// Payloads are read straight into page-aligned buffers (O_DIRECT needs
// aligned memory) and READ replies are written straight from them. A
// buffer's size is a power of two from 4 KiB to 32 MiB (a size class); the
// pool keeps one sync.Pool per class, so in steady state a request takes a
// buffer that an earlier one gave back and nothing is allocated.
//
// The buffers are ordinary Go memory: the Go heap does not move objects,
// and an op references its buffer for as long as the kernel or the writer
// uses it. Large allocations are page-aligned in practice; when one is not,
// a page more is allocated and the buffer starts at the first page boundary.
//
// Ownership: a buffer belongs to exactly one op at a time, from get to put.
// While the op executes it is the kernel's (or a sync helper's); a READ's
// buffer then travels with its reply to the loop of the session's current
// connection, which puts it back once the WRITEV that carried it has
// completed.

const (
	pageSize    = 4096
	minBufShift = 12 // 4 KiB
	maxBufShift = 25 // 32 MiB = wire.MaxTransferLimit
	numClasses  = maxBufShift - minBufShift + 1
)

// buffer is a pooled data buffer.
type buffer struct {
	b   []byte // len = cap = the class size
	cls uint8
}

type bufPool struct {
	classes [numClasses]sync.Pool
}

// class returns the size class for n bytes (1 ≤ n ≤ 32 MiB).
func class(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of at least n bytes (n ≤ 32 MiB).
func (p *bufPool) get(n int) *buffer {
	c := class(n)
	if v := p.classes[c].Get(); v != nil {
		return v.(*buffer)
	}
	return &buffer{b: alignedBytes(1 << (c + minBufShift)), cls: uint8(c)}
}

func (p *bufPool) put(b *buffer) { p.classes[b.cls].Put(b) }

// alignedBytes allocates n bytes starting at a page boundary.
func alignedBytes(n int) []byte {
	b := make([]byte, n)
	if uintptr(unsafe.Pointer(&b[0]))%pageSize == 0 {
		return b
	}
	b = make([]byte, n+pageSize)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & (pageSize - 1))
	return b[off : off+n : off+n]
}

// op is one request on its way through the pipeline: parsed by its
// connection's loop, recorded under its session's lock, executed on that
// loop's ring (or inline, or by a sync helper), completed there, and (for a
// READ) sent by the loop of the session's current connection. Ops are
// pooled.
type op struct {
	srv  *Server
	sess *session
	// origin is the connection that read the op, executes it, and is
	// charged for its buffer (MaxBufferBytes); counted is the connection
	// whose MaxInflight count the reply gives back (origin, or the
	// connection of a duplicate that took the transaction over after a
	// resume).
	origin  *conn
	counted *conn

	id     uint64
	wop    wire.Op
	flags  wire.Flags
	bop    backend.Op
	bflags backend.Flags
	off    uint64
	length uint32
	// reqFloor is the request's floor (§5.3 rule 3).
	reqFloor uint64
	buf      *buffer
	handle   uint32 // 1 + index in the session's table of executing ops
	err      error  // result of the synchronous path (sync helper)
	start    int64  // metrics.Now() when it was recorded executing
}

var opPool = sync.Pool{New: func() any { return new(op) }}

func getOp(s *Server) *op {
	o := opPool.Get().(*op)
	o.srv = s
	return o
}

// data is the op's data buffer cut to its length (nil for ops without
// one).
func (o *op) data() []byte {
	if o.buf == nil {
		return nil
	}
	return o.buf.b[:o.length]
}

// release gives the buffer back (crediting the connection it was charged
// to) and returns the op to the pool. on is the connection whose loop is
// running the release (nil if none): the origin's loop re-checks its
// budget after every batch by itself, any other releaser wakes it if it
// waits for buffers. The op must not be referenced after.
func (o *op) release(on *conn) {
	if o.buf != nil {
		n := len(o.buf.b)
		o.srv.bufs.put(o.buf)
		o.buf = nil
		o.origin.releaseBuffer(n, on)
	}
	*o = op{}
	opPool.Put(o)
}

// backendOp maps a wire op to the backend's (for the ops that reach it).
func backendOp(w wire.Op) backend.Op {
	switch w {
	case wire.OpRead:
		return backend.OpRead
	case wire.OpWrite:
		return backend.OpWrite
	case wire.OpFlush:
		return backend.OpFlush
	case wire.OpDiscard:
		return backend.OpDiscard
	}
	return backend.OpWriteZeroes
}

func backendFlags(f wire.Flags) backend.Flags {
	var b backend.Flags
	if f&wire.FlagFUA != 0 {
		b |= backend.FlagFUA
	}
	if f&wire.FlagNoUnmap != 0 {
		b |= backend.FlagNoUnmap
	}
	return b
}
