//go:build linux

package ublk

// The file target serves a ublk device from a regular file or a block
// device through internal/backend.
//
//   serial (queue goroutine):  Handle: Check -> Prep an SQE on the queue's
//                              own ring (user data = tag)
//                              HandleCQE: Result -> Complete, or hand the
//                              request to a helper (StepSync)
//   parallel (helpers):        File.Sync (a blocking syscall) -> Complete
//
// The ring path is one SQE and one CQE per request, no goroutine hand-off
// and no allocation. One exception: a file on tmpfs (or ramfs). There
// io_uring cannot complete reads and writes inline (the filesystem does not
// support RWF_NOWAIT, so the kernel hands every request to an io-wq thread
// and back), and the data is memory anyway. Such a file is mapped (backend.MemFile)
// and the queue goroutine copies: writes into the mapping, reads out of it
// where the pages are known to hold data, with pread elsewhere (reading a
// hole through a mapping would allocate it). Measured for 4 KiB random
// reads: on the host (BenchmarkFileTargetRing, CPU per request) 3.2 µs
// through io-wq, 1.2 µs with pread, 0.5 µs copying from the mapping; in
// the TCG test guest at QD32, as a fraction of the kernel loop driver's
// IOPS on the same file, 0.42 through io-wq, 0.59 with pread, 0.93 copying.
//
// The synchronous path is rare: FUA discards and write-zeroes (the op plus
// fdatasync), block-device discards on kernels without
// BLOCK_URING_CMD_DISCARD, write-zeroes where fallocate says EOPNOTSUPP
// (NoUnmap on tmpfs, which has no ZERO_RANGE: the backend writes zeroes;
// BLKZEROOUT on block devices), short transfers and EAGAIN. It runs on at
// most syncHelpers goroutines per queue, started on first use and waited
// for in the queue handler's Close.

import (
	"fmt"
	"math/bits"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/uring"
)

// syncHelpers bounds the helper goroutines of one queue.
const syncHelpers = 4

// FileTarget serves a device from a backend.File: reads and writes with
// O_DIRECT (unless the File is Buffered), FLUSH as fdatasync, FUA as
// RWF_DSYNC, DISCARD as a punched hole or BLKDISCARD, WRITE_ZEROES as
// fallocate zero-range/punch-hole or BLKZEROOUT. It advertises exactly what
// the File's Caps say. The target owns the File: Close closes it.
type FileTarget struct {
	f    *backend.File
	geom Geometry
	// ErrorLog, if set, is called with every error a request completes
	// with (the backend's error names the operation, range and file), from
	// the queue goroutine or a helper goroutine: it must be safe for
	// concurrent use and must not block. Set it before the device is
	// created.
	ErrorLog func(error)
	// fixedFile registers the File with each queue's ring and names it by
	// index in the SQEs. Off: it was not measurably faster (see
	// BenchmarkFileTargetRing).
	fixedFile bool
	// inline: reads, writes and flushes run on the queue goroutine (files
	// on a memory filesystem without RWF_NOWAIT, see backend.InlineCopies): copies
	// through mem when it is set, pread and pwrite otherwise.
	inline bool
	mem    *backend.MemFile
}

// NewFileTarget wraps f, which the target then owns.
func NewFileTarget(f *backend.File) *FileTarget {
	t := &FileTarget{f: f, geom: fileGeometry(f), inline: backend.InlineCopies(f)}
	if t.inline {
		t.mem = backend.MapFile(f) // nil if it cannot be mapped: pread and pwrite then
	}
	return t
}

// File is the backend the target serves.
func (t *FileTarget) File() *backend.File { return t.f }

// String describes the backing file and how requests reach it, for logs.
func (t *FileTarget) String() string {
	switch {
	case t.mem != nil:
		return t.f.String() + "; memory filesystem: reads and writes copied through a mapping by the queue thread"
	case t.inline:
		return t.f.String() + "; memory filesystem: reads and writes with pread/pwrite on the queue thread"
	}
	return t.f.String() + "; I/O on the queue's io_uring"
}

func fileGeometry(f *backend.File) Geometry {
	lbs := f.LogicalBlockSize()
	caps := f.Caps()
	g := Geometry{
		Size:              f.Size(),
		LogicalBlockSize:  lbs,
		PhysicalBlockSize: clampPow2(f.PhysicalBlockSize(), lbs, 1<<16),
		ReadOnly:          f.ReadOnly(),
		Rotational:        f.IsBlockDevice() && rotational(f.Fd()),
		// The backing file's page cache (Buffered) or the disk's write
		// cache holds completed writes until fdatasync: the kernel must
		// send FLUSH, and FUA for writes that must be durable at once.
		VolatileCache: caps.Flush,
		FUA:           caps.Flush && caps.FUA,
		Discard:       caps.Discard,
		WriteZeroes:   caps.WriteZeroes,
	}
	if caps.Discard {
		g.DiscardGranularity = clampPow2(caps.DiscardGranularity, lbs, 1<<31)
		g.MaxDiscardBytes = caps.MaxDiscardBytes
	}
	if caps.WriteZeroes {
		g.MaxWriteZeroesBytes = caps.MaxWriteZeroesBytes
	}
	return g
}

// clampPow2 returns v rounded down to a power of two within [lo, hi]
// (lo and hi are powers of two).
func clampPow2(v, lo, hi uint32) uint32 {
	v = min(max(v, lo), hi)
	return 1 << (31 - bits.LeadingZeros32(v))
}

// rotational reads queue/rotational of the block device open as fd
// (a partition uses its disk's queue).
func rotational(fd int) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return false
	}
	dev := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	for _, p := range []string{dev + "/queue/rotational", dev + "/../queue/rotational"} {
		if b, err := os.ReadFile(p); err == nil {
			v, err := strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && v != 0
		}
	}
	return false
}

// Geometry implements Target.
func (t *FileTarget) Geometry() Geometry { return t.geom }

// Describe implements Target.
func (t *FileTarget) Describe() string {
	s := "file " + t.f.Path()
	var opts []string
	if t.f.ReadOnly() {
		opts = append(opts, "read-only")
	}
	if t.f.Buffered() {
		opts = append(opts, "buffered")
	}
	if len(opts) > 0 {
		s += " (" + strings.Join(opts, ", ") + ")"
	}
	return s
}

// Close implements Target: it closes the File. Every queue has stopped,
// and with it every helper.
func (t *FileTarget) Close() error {
	if t.mem != nil {
		t.mem.Unmap()
		t.mem = nil
	}
	return t.f.Close()
}

// NewQueue implements Target.
func (t *FileTarget) NewQueue(q *QueueContext) (QueueHandler, error) {
	h := &fileQueue{
		t:     t,
		f:     t.f,
		q:     q,
		reqs:  make([]*Request, q.Depth),
		syncQ: make(chan *Request, q.Depth),
	}
	if t.mem != nil {
		// A fault on the mapping (the file was truncated under us, or
		// tmpfs is full when a write reaches a hole) becomes a panic that
		// backend.MemFile's copies recover from, instead of killing the process.
		// NewQueue runs on the queue goroutine, which does the copies.
		debug.SetPanicOnFault(true)
	}
	if t.fixedFile {
		if err := q.q.ring.RegisterFiles([]int32{int32(t.f.Fd())}); err != nil {
			return nil, fmt.Errorf("file target: %w", err)
		}
		h.fixed = true
	}
	return h, nil
}

// fileQueue serves one hardware queue; a RingHandler.
type fileQueue struct {
	t *FileTarget
	f *backend.File
	q *QueueContext
	// reqs[tag] is the request of an SQE in flight or with a helper.
	reqs     []*Request
	inflight int // SQEs in flight (queue goroutine only)
	fixed    bool

	// Synchronous path. syncQ holds at most one entry per tag, so a send
	// never blocks; helpers is touched by the queue goroutine only.
	syncQ    chan *Request
	syncBusy atomic.Int32 // requests sent to syncQ and not yet finished
	helpers  int
	wg       sync.WaitGroup
}

var _ RingHandler = (*fileQueue)(nil)

// ublk -> backend operation and flag mapping.
var backendOps = [...]backend.Op{
	OpRead:        backend.OpRead,
	OpWrite:       backend.OpWrite,
	OpFlush:       backend.OpFlush,
	OpDiscard:     backend.OpDiscard,
	OpWriteZeroes: backend.OpWriteZeroes,
}

// badOp is refused by backend.Check with EINVAL.
const badOp = backend.Op(0xff)

func backendOp(o Op) backend.Op {
	if o == 0 || int(o) >= len(backendOps) {
		return badOp
	}
	return backendOps[o]
}

func backendFlags(f Flags) backend.Flags {
	var b backend.Flags
	if f&FlagFUA != 0 {
		b |= backend.FlagFUA
	}
	if f&FlagNoUnmap != 0 {
		b |= backend.FlagNoUnmap
	}
	return b
}

// Handle implements QueueHandler.
func (h *fileQueue) Handle(r *Request) {
	op, fl := backendOp(r.Op), backendFlags(r.Flags)
	if err := h.f.Check(op, fl, r.Offset, r.Length); err != nil {
		h.finish(r.Tag, err)
		return
	}
	if h.t.inline {
		if h.handleInline(r, op, fl) {
			return
		}
	}
	h.reqs[r.Tag] = r
	if h.f.NeedsSync(op, fl) {
		h.toHelper(r)
		return
	}
	s := h.q.GetSQE()
	h.f.Prep(s, op, fl, r.Offset, r.Buf, r.Length)
	if h.fixed {
		s.Fd = 0
		s.SetFlags(uring.SQEFixedFile)
	}
	s.SetUserData(h.q.UserData(uint64(r.Tag)))
	h.inflight++
}

// handleInline serves r on a memory filesystem if it is a read, write or
// flush, and reports whether it did. Before a discard or write-zeroes it
// forgets that the range holds data.
func (h *fileQueue) handleInline(r *Request, op backend.Op, fl backend.Flags) bool {
	m := h.t.mem
	switch op {
	case backend.OpRead:
		if m != nil && m.IsData(r.Offset, r.Length) && m.CopyOut(r.Buf, r.Offset) {
			h.q.Complete(r.Tag, 0)
			return true
		}
	case backend.OpWrite:
		// FUA needs nothing more: tmpfs and ramfs have no cache to flush.
		if m != nil && m.CopyIn(r.Offset, r.Buf) {
			m.SetData(r.Offset, r.Length)
			h.q.Complete(r.Tag, 0)
			return true
		}
	case backend.OpFlush: // fdatasync: a no-op on a memory filesystem
	default:
		if m != nil {
			m.ClearData(r.Offset, r.Length)
		}
		return false
	}
	// pread, pwrite (which also report why a copy faulted), fdatasync.
	h.finish(r.Tag, h.f.Sync(op, fl, r.Offset, r.Buf, r.Length))
	return true
}

// HandleCQE implements RingHandler.
func (h *fileQueue) HandleCQE(c *uring.CQE) {
	h.inflight--
	tag := uint16(FromUserData(c.UserData))
	r := h.reqs[tag]
	step, err := h.f.Result(backendOp(r.Op), backendFlags(r.Flags), r.Offset, r.Length, c.Res)
	if step == backend.StepSync {
		h.toHelper(r)
		return
	}
	h.finish(tag, err)
}

// Inflight implements RingHandler.
func (h *fileQueue) Inflight() int { return h.inflight }

// finish completes tag with the errno of err (0 for nil).
func (h *fileQueue) finish(tag uint16, err error) {
	errno := backend.Errno(err)
	if err != nil && h.t.ErrorLog != nil {
		h.t.ErrorLog(err)
	}
	h.q.Complete(tag, errno)
}

// toHelper queues r for the synchronous path, starting another helper
// when every running one is busy and the bound allows.
func (h *fileQueue) toHelper(r *Request) {
	if n := int(h.syncBusy.Add(1)); n > h.helpers && h.helpers < syncHelpers {
		h.helpers++
		h.wg.Add(1)
		go h.helper()
	}
	h.syncQ <- r // capacity depth: never blocks
}

func (h *fileQueue) helper() {
	defer h.wg.Done()
	for r := range h.syncQ {
		tag := r.Tag
		err := h.f.Sync(backendOp(r.Op), backendFlags(r.Flags), r.Offset, r.Buf, r.Length)
		h.syncBusy.Add(-1)
		// The queue may reuse the tag as soon as Complete runs: r is not
		// touched after it.
		h.finish(tag, err)
	}
}

// Close implements QueueHandler: every request has completed, so the
// helpers are idle; stop them and wait.
func (h *fileQueue) Close() {
	close(h.syncQ)
	h.wg.Wait()
	if h.fixed {
		h.q.q.ring.UnregisterFiles() //nolint:errcheck // the ring closes next anyway
	}
}
