//go:build linux

// Package uring is DST's own small io_uring layer, written directly on
// golang.org/x/sys/unix: no cgo and no third-party io_uring library (those
// either fail to link on Go >= 1.23 or cost several times a raw ring per
// request).
//
// # Ownership
//
// A Ring belongs to exactly one goroutine. Nothing in this package takes a
// lock: GetSQE, Submit, Wait and Reap touch shared ring memory without
// synchronisation and must only be called by the owner. Other goroutines
// reach the owner through an eventfd whose read is kept armed on the ring
// (see PrepReadEventfd) or through channels the owner checks between waits.
//
// A ring created with SingleIssuer (and DeferTaskrun, which needs it) is
// bound by the kernel to the OS thread that created it: the owner must call
// LockThread (runtime.LockOSThread) before New and keep the lock for the
// ring's whole life. Without SingleIssuer any thread may enter the ring, but
// the single-goroutine rule still holds.
//
// # Memory
//
// The kernel reads and writes memory whose address is placed in an SQE.
// Two lifetimes matter:
//
//   - Submission data (iovec arrays, timespecs, the URING_CMD payload, which
//     lives inside the SQE itself) is copied by the kernel while Submit runs
//     (IORING_FEAT_SUBMIT_STABLE, required by New). It must stay valid until
//     Submit returns.
//   - Data buffers (read/write targets, ublk control structures that the
//     kernel fills from a worker thread) are used until the CQE arrives. The
//     caller keeps them referenced from a long-lived structure (a per-tag
//     slab, an mmap) until it has reaped the completion. The ring does not
//     pin anything, so that the hot path allocates nothing.
//
// Every prep method passes its pointers through escape(), which forces the
// pointed-to object onto the heap: Go may move goroutine stacks, and a stack
// address in an SQE would then point at garbage. Heap and mmap memory never
// move.
package uring

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Setup flags (io_uring_setup).
const (
	SetupIOPoll        = 1 << 0
	SetupSQPoll        = 1 << 1
	SetupCQSize        = 1 << 3
	SetupClamp         = 1 << 4
	SetupSubmitAll     = 1 << 7
	SetupCoopTaskrun   = 1 << 8
	SetupTaskrunFlag   = 1 << 9
	SetupSQE128        = 1 << 10
	SetupCQE32         = 1 << 11
	SetupSingleIssuer  = 1 << 12
	SetupDeferTaskrun  = 1 << 13
	featSingleMmap     = 1 << 0
	featNoDrop         = 1 << 1
	featSubmitStable   = 1 << 2
	featExtArg         = 1 << 8
	enterGetEvents     = 1 << 0
	enterExtArg        = 1 << 3
	sqNeedWakeup       = 1 << 0
	sqCQOverflow       = 1 << 1
	sqTaskrun          = 1 << 2
	offSQRing          = 0
	offCQRing          = 0x8000000
	offSQEs            = 0x10000000
	MaxEntries         = 32768
	MaxCQEntries       = 2 * MaxEntries
	registerBuffers    = 0
	unregisterBuffers  = 1
	registerFiles      = 2
	unregisterFiles    = 3
	sizeofSQE          = 64
	sizeofCQE          = 16
	sizeofParams       = 120
	sizeofGeteventsArg = 24
)

// ErrClosed is returned by operations on a closed ring.
var ErrClosed = errors.New("uring: ring is closed")

// ErrTimeout is returned by Wait when the timeout expires before a
// completion is ready.
var ErrTimeout = errors.New("uring: wait timed out")

// Options configure New. The zero value is a 64-entry ring with the kernel's
// default CQ size and no special flags.
type Options struct {
	Entries   uint32 // SQ entries, 1..32768, rounded up to a power of two
	CQEntries uint32 // CQ entries (0 = 2×Entries), must be >= Entries
	SQE128    bool   // 128-byte SQEs (80-byte URING_CMD payloads; ublk control)
	CQE32     bool   // 32-byte CQEs
	// SingleIssuer and DeferTaskrun bind the ring to the creating thread and
	// run completion work only when that thread enters the ring: the cheapest
	// mode for a ring owned by one locked goroutine. If the kernel refuses
	// them, New falls back to CoopTaskrun, then to no flags; Flags() tells
	// what was granted.
	SingleIssuer bool
	DeferTaskrun bool
	CoopTaskrun  bool
}

type params struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFd         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// Ring is one io_uring instance. See the package comment for the ownership
// and memory rules.
type Ring struct {
	fd       int
	flags    uint32 // granted setup flags
	features uint32

	sqMem, cqMem, sqeMem []byte

	sqHead    *uint32
	sqTail    *uint32
	sqFlags   *uint32
	sqMask    uint32
	sqEntries uint32
	sqes      unsafe.Pointer
	sqeShift  uint // 6 (64 B) or 7 (128 B)
	sqeTail   uint32
	sqeHead   uint32 // first prepared but not yet published SQE

	cqHead     *uint32
	cqTail     *uint32
	cqOverflow *uint32
	cqMask     uint32
	cqEntries  uint32
	cqes       unsafe.Pointer
	cqeShift   uint // 4 (16 B) or 5 (32 B)

	waitArg getEventsArg
	waitTs  unix.Timespec // referenced by waitArg; lives in the Ring (heap)
	closed  bool
}

type getEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32
	ts        uint64
}

// LockThread locks the calling goroutine to its OS thread. A goroutine that
// owns a SingleIssuer ring must call it before New and never unlock.
func LockThread() { runtime.LockOSThread() }

// New creates a ring. Invalid sizes are refused with an error naming the
// bad value; if the kernel refuses SingleIssuer/DeferTaskrun/CoopTaskrun the
// ring is created without them.
func New(o Options) (*Ring, error) {
	if o.Entries == 0 {
		return nil, fmt.Errorf("uring: ring size 0: need between 1 and %d entries", MaxEntries)
	}
	if o.Entries > MaxEntries {
		return nil, fmt.Errorf("uring: ring size %d too large: at most %d entries", o.Entries, MaxEntries)
	}
	if o.CQEntries != 0 && o.CQEntries < o.Entries {
		return nil, fmt.Errorf("uring: CQ size %d smaller than SQ size %d", o.CQEntries, o.Entries)
	}
	if o.CQEntries > MaxCQEntries {
		return nil, fmt.Errorf("uring: CQ size %d too large: at most %d entries", o.CQEntries, MaxCQEntries)
	}
	base := uint32(0)
	if o.SQE128 {
		base |= SetupSQE128
	}
	if o.CQE32 {
		base |= SetupCQE32
	}
	if o.CQEntries != 0 {
		base |= SetupCQSize
	}
	var tries []uint32
	if o.DeferTaskrun {
		tries = append(tries, base|SetupSingleIssuer|SetupDeferTaskrun|SetupTaskrunFlag)
	}
	if o.SingleIssuer || o.DeferTaskrun {
		tries = append(tries, base|SetupSingleIssuer|SetupCoopTaskrun|SetupTaskrunFlag)
	}
	if o.CoopTaskrun || o.SingleIssuer || o.DeferTaskrun {
		tries = append(tries, base|SetupCoopTaskrun|SetupTaskrunFlag)
	}
	tries = append(tries, base)

	var lastErr error
	for _, fl := range tries {
		r, err := setup(o, fl)
		if err == nil {
			return r, nil
		}
		lastErr = err
		if !errors.Is(err, unix.EINVAL) {
			break
		}
	}
	return nil, lastErr
}

func setup(o Options, flags uint32) (*Ring, error) {
	var p params
	p.flags = flags
	p.cqEntries = o.CQEntries
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(o.Entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("uring: io_uring_setup(entries=%d, flags=%#x): %w", o.Entries, flags, errno)
	}
	r := &Ring{fd: int(fd), flags: flags, features: p.features}
	if p.features&featSubmitStable == 0 || p.features&featNoDrop == 0 || p.features&featExtArg == 0 {
		unix.Close(r.fd)
		return nil, fmt.Errorf("uring: kernel lacks io_uring features SUBMIT_STABLE, NODROP or EXT_ARG (have %#x); need Linux 5.11 or later", p.features)
	}
	if err := r.mmap(&p); err != nil {
		r.unmap()
		unix.Close(r.fd)
		return nil, err
	}
	return r, nil
}

func (r *Ring) mmap(p *params) error {
	sqeSize := uintptr(sizeofSQE)
	r.sqeShift = 6
	if r.flags&SetupSQE128 != 0 {
		sqeSize = 128
		r.sqeShift = 7
	}
	cqeSize := uintptr(sizeofCQE)
	r.cqeShift = 4
	if r.flags&SetupCQE32 != 0 {
		cqeSize = 32
		r.cqeShift = 5
	}
	sqSize := uintptr(p.sqOff.array) + uintptr(p.sqEntries)*4
	cqSize := uintptr(p.cqOff.cqes) + uintptr(p.cqEntries)*cqeSize
	single := p.features&featSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
		cqSize = sqSize
	}
	var err error
	r.sqMem, err = unix.Mmap(r.fd, offSQRing, int(sqSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("uring: mmap SQ ring: %w", err)
	}
	if single {
		r.cqMem = r.sqMem
	} else {
		r.cqMem, err = unix.Mmap(r.fd, offCQRing, int(cqSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("uring: mmap CQ ring: %w", err)
		}
	}
	r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(uintptr(p.sqEntries)*sqeSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("uring: mmap SQEs: %w", err)
	}
	sq := unsafe.Pointer(&r.sqMem[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.sqOff.tail))
	r.sqFlags = (*uint32)(unsafe.Add(sq, p.sqOff.flags))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.sqOff.ringMask))
	r.sqEntries = *(*uint32)(unsafe.Add(sq, p.sqOff.ringEntries))
	// Identity-map the SQ index array once; we always fill SQEs in order.
	arr := unsafe.Slice((*uint32)(unsafe.Add(sq, p.sqOff.array)), r.sqEntries)
	for i := range arr {
		arr[i] = uint32(i)
	}
	r.sqes = unsafe.Pointer(&r.sqeMem[0])

	cq := unsafe.Pointer(&r.cqMem[0])
	r.cqHead = (*uint32)(unsafe.Add(cq, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(cq, p.cqOff.tail))
	r.cqOverflow = (*uint32)(unsafe.Add(cq, p.cqOff.overflow))
	r.cqMask = *(*uint32)(unsafe.Add(cq, p.cqOff.ringMask))
	r.cqEntries = *(*uint32)(unsafe.Add(cq, p.cqOff.ringEntries))
	r.cqes = unsafe.Add(cq, p.cqOff.cqes)
	return nil
}

func (r *Ring) unmap() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
		r.sqeMem = nil
	}
	if r.cqMem != nil && (r.sqMem == nil || &r.cqMem[0] != &r.sqMem[0]) {
		unix.Munmap(r.cqMem)
	}
	r.cqMem = nil
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
		r.sqMem = nil
	}
}

// Close unmaps the ring and closes its fd. In-flight requests are cancelled
// by the kernel; buffers they referenced may still be written until the
// kernel has torn the ring down, so callers wait for the completions they
// care about before closing. Close is idempotent.
func (r *Ring) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.unmap()
	return unix.Close(r.fd)
}

// Fd returns the ring's file descriptor.
func (r *Ring) Fd() int { return r.fd }

// Flags returns the setup flags the kernel granted.
func (r *Ring) Flags() uint32 { return r.flags }

// SQEntries and CQEntries return the ring sizes the kernel chose.
func (r *Ring) SQEntries() uint32 { return r.sqEntries }
func (r *Ring) CQEntries() uint32 { return r.cqEntries }

// GetSQE returns the next free submission entry, zeroed, or nil when the
// submission queue is full (submit, then try again). The entry is published
// to the kernel by the next Submit.
func (r *Ring) GetSQE() *SQE {
	head := atomic.LoadUint32(r.sqHead)
	if r.sqeTail-head >= r.sqEntries {
		return nil
	}
	p := unsafe.Add(r.sqes, uintptr(r.sqeTail&r.sqMask)<<r.sqeShift)
	r.sqeTail++
	if r.sqeShift == 7 {
		*(*[128]byte)(p) = [128]byte{}
	} else {
		*(*[64]byte)(p) = [64]byte{}
	}
	return (*SQE)(p)
}

// SQSpace returns how many SQEs GetSQE can still hand out before a Submit.
func (r *Ring) SQSpace() uint32 {
	return r.sqEntries - (r.sqeTail - atomic.LoadUint32(r.sqHead))
}

// Cmd80 returns the 80-byte URING_CMD payload area of an SQE on an SQE128
// ring. It panics on a 64-byte ring: that is a programming error.
func (r *Ring) Cmd80(s *SQE) *[80]byte {
	if r.sqeShift != 7 {
		panic("uring: Cmd80 on a ring without SQE128")
	}
	return (*[80]byte)(unsafe.Pointer(&s.Addr3))
}

// flushSQ publishes prepared SQEs and returns how many are pending.
func (r *Ring) flushSQ() uint32 {
	if r.sqeHead != r.sqeTail {
		r.sqeHead = r.sqeTail
		atomic.StoreUint32(r.sqTail, r.sqeTail)
	}
	return r.sqeTail - atomic.LoadUint32(r.sqHead)
}

// Submit publishes every prepared SQE with one io_uring_enter and returns
// how many the kernel consumed.
func (r *Ring) Submit() (int, error) { return r.submit(0, -1) }

// SubmitAndWait publishes prepared SQEs and waits until at least n
// completions are ready, with as few io_uring_enter calls as the kernel
// allows (one, unless a signal interrupts the wait).
func (r *Ring) SubmitAndWait(n uint32) (int, error) { return r.submit(n, -1) }

// SubmitAndWaitTimeout is SubmitAndWait bounded by a timeout in
// nanoseconds. It returns ErrTimeout when the timeout expired with fewer
// than n completions ready; submitted SQEs stay submitted.
func (r *Ring) SubmitAndWaitTimeout(n uint32, timeoutNs int64) (int, error) {
	return r.submit(n, timeoutNs)
}

func (r *Ring) submit(wait uint32, timeoutNs int64) (int, error) {
	if r.closed {
		return 0, ErrClosed
	}
	r.flushSQ()
	var deadline int64
	if timeoutNs >= 0 && wait > 0 {
		deadline = monoNow() + timeoutNs
	}
	submitted := 0
	for {
		pending := r.sqeTail - atomic.LoadUint32(r.sqHead)
		need := uint32(0)
		if wait > 0 {
			if ready := r.CQReady(); ready < wait {
				need = wait - ready
			}
		}
		flags := uintptr(0)
		if need > 0 || r.needEnterForCQ() {
			flags |= enterGetEvents
		}
		if pending == 0 && flags == 0 {
			return submitted, nil
		}
		var argp, argsz uintptr
		if need > 0 && deadline != 0 {
			left := deadline - monoNow()
			if left <= 0 {
				return submitted, ErrTimeout
			}
			r.waitTs = unix.NsecToTimespec(left)
			r.waitArg = getEventsArg{ts: uint64(uintptr(unsafe.Pointer(&r.waitTs)))}
			flags |= enterExtArg
			argp = uintptr(unsafe.Pointer(&r.waitArg))
			argsz = sizeofGeteventsArg
		}
		n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(pending), uintptr(need), flags, argp, argsz)
		switch errno {
		case 0:
			submitted += int(n)
			// The kernel returns the submit count even when a signal cut
			// the wait short, so check the CQ again rather than trust n.
			if need == 0 || r.CQReady() >= wait {
				if r.sqeTail == atomic.LoadUint32(r.sqHead) || n == 0 {
					return submitted, nil
				}
			}
		case unix.EINTR:
			// Go's preemption signals interrupt the wait; retry with
			// whatever is still pending (the kernel advanced sqHead past
			// anything it consumed).
		case unix.ETIME:
			return submitted, ErrTimeout
		case unix.EBUSY, unix.EAGAIN:
			return submitted, fmt.Errorf("uring: io_uring_enter: %w (completion queue full: reap completions first)", errno)
		default:
			return submitted, fmt.Errorf("uring: io_uring_enter: %w", errno)
		}
	}
}

// needEnterForCQ reports whether completions are waiting in the kernel that
// only an io_uring_enter(GETEVENTS) will post: deferred task work, or CQEs
// parked on the overflow list.
func (r *Ring) needEnterForCQ() bool {
	f := atomic.LoadUint32(r.sqFlags)
	return f&(sqCQOverflow|sqTaskrun) != 0
}

// CQReady returns how many completions are in the CQ ring now.
func (r *Ring) CQReady() uint32 {
	return atomic.LoadUint32(r.cqTail) - *r.cqHead
}

// Overflowed returns the kernel's count of CQEs it could not post (only
// non-zero on kernels without NODROP, which New refuses) — exposed for
// tests and diagnostics.
func (r *Ring) Overflowed() uint32 { return atomic.LoadUint32(r.cqOverflow) }

// Reap copies up to len(out) ready completions into out, marks them seen
// and returns how many it copied. It never blocks; on a DeferTaskrun ring,
// or when completions overflowed, it enters the kernel once (without
// waiting) to have them posted.
func (r *Ring) Reap(out []CQE) int {
	if r.closed || len(out) == 0 {
		return 0
	}
	if r.CQReady() == 0 && r.needEnterForCQ() {
		r.submit(0, -1) //nolint:errcheck // a failed flush just leaves nothing to reap
	}
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for head != tail && n < len(out) {
		p := unsafe.Add(r.cqes, uintptr(head&r.cqMask)<<r.cqeShift)
		if r.cqeShift == 5 {
			out[n] = *(*CQE)(p)
		} else {
			c := (*[2]uint64)(p)
			out[n] = CQE{UserData: c[0], Res: int32(uint32(c[1])), Flags: uint32(c[1] >> 32)}
		}
		head++
		n++
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}

// Wait blocks until at least one completion is ready, submitting prepared
// SQEs on the way, then reaps into out. timeoutNs < 0 waits forever; on
// expiry it returns 0 and ErrTimeout.
func (r *Ring) Wait(out []CQE, timeoutNs int64) (int, error) {
	if r.sqeHead != r.sqeTail || r.CQReady() == 0 {
		if _, err := r.submit(1, timeoutNs); err != nil {
			if n := r.Reap(out); n > 0 {
				return n, nil
			}
			return 0, err
		}
	}
	return r.Reap(out), nil
}

// CQE is a completion. Big holds the extra 16 bytes of a CQE32 ring.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
	Big      [2]uint64
}

// Err converts a negative result to a syscall.Errno and 0 or a positive
// result to nil.
func (c *CQE) Err() error {
	if c.Res < 0 {
		return syscall.Errno(-c.Res)
	}
	return nil
}

// RoundPow2 returns the smallest power of two >= n (n >= 1).
func RoundPow2(n uint32) uint32 {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len32(n-1)
}

var monoBase = time.Now()

// monoNow is a monotonic clock in nanoseconds.
func monoNow() int64 { return int64(time.Since(monoBase)) }
