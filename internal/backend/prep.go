//go:build linux

package backend

import (
	"sync"
	"syscall"
	"unsafe"

	"github.com/dst-dev/dst/internal/uring"
	"golang.org/x/sys/unix"
)

// Step is what the caller does next with a request after Result.
type Step uint8

const (
	// StepDone: the request is finished; the error returned with it (nil
	// or wrapping an errno) is its result.
	StepDone Step = iota
	// StepSync: the ring could not finish the request. Call
	// f.Sync(op, flags, off, buf, length) — the same arguments as Prep —
	// on a goroutine that may block (never the ring's owner), and use its
	// error as the result. Sync performs the whole operation again; that is
	// safe because every operation is idempotent for a request that has not
	// completed yet.
	StepSync
)

func (s Step) String() string {
	if s == StepSync {
		return "sync"
	}
	return "done"
}

// Check validates a request before it is prepared: operation and flags,
// read-only refusal, support, alignment to LogicalBlockSize and range. It
// returns nil or an error wrapping the errno listed in the table in
// errors.go. Flush ignores off and length.
func (f *File) Check(op Op, flags Flags, off uint64, length uint32) error {
	if f.closed.Load() {
		return refuse(syscall.EBADF, "%s on closed file %s", op, f.path)
	}
	if flags&^knownFlags != 0 {
		return refuse(syscall.EINVAL, "%s with unknown flags %#x", op, uint16(flags&^knownFlags))
	}
	if flags&FlagNoUnmap != 0 && op != OpWriteZeroes {
		return refuse(syscall.EINVAL, "%s with NoUnmap (only valid for write-zeroes)", op)
	}
	switch op {
	case OpFlush:
		return nil
	case OpRead:
	case OpWrite, OpDiscard, OpWriteZeroes:
		if f.readOnly {
			return refuse(syscall.EROFS, "%s on read-only %s", op, f.path)
		}
		if op == OpDiscard && !f.caps.Discard {
			return refuse(syscall.EOPNOTSUPP, "discard is not supported by %s", f.path)
		}
	default:
		return refuse(syscall.EINVAL, "unknown operation %d", uint8(op))
	}
	if length == 0 {
		return refuse(syscall.EINVAL, "%s of length 0", op)
	}
	if mask := uint64(f.lbs - 1); (off|uint64(length))&mask != 0 {
		return refuse(syscall.EINVAL, "%s of %d bytes at offset %d is not aligned to the %d-byte logical block size", op, length, off, f.lbs)
	}
	end := off + uint64(length)
	if end < off {
		return refuse(syscall.EINVAL, "%s of %d bytes at offset %d overflows", op, length, off)
	}
	if end > f.size {
		errno := syscall.ENOSPC
		if op == OpRead {
			errno = syscall.EINVAL
		}
		return refuse(errno, "%s of %d bytes at offset %d ends beyond the %d-byte size of %s", op, length, off, f.size, f.path)
	}
	return nil
}

// NeedsSync reports whether Prep will produce a placeholder NOP for this
// request (whose Result is always StepSync): FUA discards and write-zeroes
// (the op and the fdatasync after it are one synchronous step), and block
// device discards on kernels without BLOCK_URING_CMD_DISCARD. A caller may
// test it before taking an SQE and call Sync directly; it does not have to.
func (f *File) NeedsSync(op Op, flags Flags) bool {
	if f.faults != nil {
		return true
	}
	switch op {
	case OpDiscard:
		return flags&FlagFUA != 0 || (f.blockDev && !f.discardCmd)
	case OpWriteZeroes:
		return flags&FlagFUA != 0
	}
	return false
}

// Prep fills sqe (fresh from Ring.GetSQE, so zeroed) for a request that
// passed Check. buf holds the data of a read or write (len(buf) >= length;
// its first length bytes are used) and must stay valid and referenced until
// the completion has been reaped; it is unused by other ops. The caller sets
// sqe.UserData afterwards (and may set SQE flags, or replace Fd by a
// registered-file index with uring.SQEFixedFile). Every request is one SQE
// and one CQE; pass the CQE result to Result.
//
// Prep never allocates, locks or makes a syscall.
func (f *File) Prep(sqe *uring.SQE, op Op, flags Flags, off uint64, buf []byte, length uint32) {
	if f.faults != nil {
		sqe.PrepNop() // Result says StepSync; Sync applies the faults
		return
	}
	switch op {
	case OpRead:
		sqe.PrepRead(f.fd, buf[:length], off)
	case OpWrite:
		var rw uint32
		if flags&FlagFUA != 0 {
			rw = unix.RWF_DSYNC
		}
		sqe.PrepWrite(f.fd, buf[:length], off, rw)
	case OpFlush:
		sqe.PrepFsync(f.fd, uring.FsyncDatasync)
	case OpDiscard:
		switch {
		case f.NeedsSync(op, flags):
			sqe.PrepNop()
		case f.blockDev:
			prepDiscardCmd(sqe, f.fd, off, length)
		default:
			sqe.PrepFallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, uint64(length))
		}
	case OpWriteZeroes:
		if f.NeedsSync(op, flags) {
			sqe.PrepNop()
		} else {
			sqe.PrepFallocate(f.fd, f.zeroMode(flags), off, uint64(length))
		}
	default:
		sqe.PrepNop() // Result reports EINVAL
	}
}

// zeroMode is the fallocate mode of a write-zeroes. With FlagNoUnmap (or
// when holes are impossible) ZERO_RANGE: on ext4/xfs the range becomes
// allocated unwritten extents, on a block device blkdev_issue_zeroout with
// BLKDEV_ZERO_NOUNMAP (which falls back to writing zeroes). Without it
// PUNCH_HOLE: a file gets a hole, a block device gets REQ_OP_WRITE_ZEROES
// that may unmap (only chosen when the device supports write-zeroes, since
// the kernel does not fall back for that mode).
func (f *File) zeroMode(flags Flags) uint32 {
	unmap := flags&FlagNoUnmap == 0 && (f.punch || f.bdevUnmapZeroes)
	if unmap {
		return unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	return unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
}

// Result interprets the CQE result res of an SQE that Prep filled with the
// same arguments. StepDone comes with the request's final error (nil on
// success); StepSync asks the caller to finish the request with Sync.
//
// StepSync is returned for: the placeholder NOPs of NeedsSync; a short read
// or write (never expected with O_DIRECT inside Size, but a file can shrink
// under us or a filesystem can stop early: the synchronous retry gets the
// real error or finishes the job); EAGAIN or EINTR; a block-device discard
// refused with EOPNOTSUPP, EINVAL or EAGAIN by BLOCK_URING_CMD_DISCARD (the
// ioctl is the fallback); a write-zeroes refused with EOPNOTSUPP by
// fallocate (Sync falls back to writing zeroes).
//
// Result never allocates on success.
func (f *File) Result(op Op, flags Flags, off uint64, length uint32, res int32) (Step, error) {
	if op >= numOps {
		return StepDone, refuse(syscall.EINVAL, "unknown operation %d", uint8(op))
	}
	if f.NeedsSync(op, flags) { // also every request of a File with faults
		return StepSync, nil
	}
	if res >= 0 {
		if (op == OpRead || op == OpWrite) && uint32(res) != length {
			return StepSync, nil
		}
		return StepDone, nil
	}
	errno := syscall.Errno(-res)
	switch {
	case errno == syscall.EAGAIN || errno == syscall.EINTR:
		return StepSync, nil
	case op == OpDiscard && f.blockDev && (errno == syscall.EOPNOTSUPP || errno == syscall.EINVAL):
		return StepSync, nil
	case op == OpWriteZeroes && errno == syscall.EOPNOTSUPP:
		return StepSync, nil
	}
	return StepDone, f.opError(op, off, length, errno)
}

// Sync performs a whole request synchronously with plain syscalls, on the
// calling goroutine (which it may block for as long as the disk takes). It
// is the StepSync path of Result, and can also serve callers without any
// ring. It checks the request first and returns nil or an error wrapping an
// errno, like Result.
func (f *File) Sync(op Op, flags Flags, off uint64, buf []byte, length uint32) error {
	if f.faults != nil {
		return f.faults.sync(f, op, flags, off, buf, length)
	}
	if err := f.Check(op, flags, off, length); err != nil {
		return err
	}
	return f.sync(op, flags, off, buf, length)
}

// sync is Sync after Check.
func (f *File) sync(op Op, flags Flags, off uint64, buf []byte, length uint32) error {
	if (op == OpRead || op == OpWrite) && len(buf) < int(length) {
		return refuse(syscall.EINVAL, "%s of %d bytes with a %d-byte buffer", op, length, len(buf))
	}
	var err error
	switch op {
	case OpRead:
		err = f.preadFull(buf[:length], off)
	case OpWrite:
		err = f.pwriteFull(buf[:length], off, flags&FlagFUA != 0)
	case OpFlush:
		err = fdatasync(f.fd)
	case OpDiscard:
		if f.blockDev {
			err = blkRangeIoctl(f.fd, unix.BLKDISCARD, off, uint64(length))
		} else {
			err = fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, uint64(length))
		}
	case OpWriteZeroes:
		err = f.syncWriteZeroes(flags, off, uint64(length))
	}
	if err == nil && flags&FlagFUA != 0 && (op == OpDiscard || op == OpWriteZeroes) {
		err = fdatasync(f.fd)
	}
	if err != nil {
		return f.opError(op, off, length, err)
	}
	return nil
}

func (f *File) preadFull(b []byte, off uint64) error {
	for len(b) > 0 {
		n, err := unix.Pread(f.fd, b, int64(off))
		switch {
		case err == unix.EINTR || err == unix.EAGAIN:
			continue
		case err != nil:
			return err
		case n == 0:
			return syscall.EIO // end of file inside the range: the file shrank
		}
		b = b[n:]
		off += uint64(n)
	}
	return nil
}

func (f *File) pwriteFull(b []byte, off uint64, fua bool) error {
	dsync := fua
	for len(b) > 0 {
		var n int
		var err error
		if dsync {
			n, err = unix.Pwritev2(f.fd, [][]byte{b}, int64(off), unix.RWF_DSYNC)
			if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
				dsync = false // fdatasync at the end instead
				continue
			}
		} else {
			n, err = unix.Pwrite(f.fd, b, int64(off))
		}
		switch {
		case err == unix.EINTR || err == unix.EAGAIN:
			continue
		case err != nil:
			return err
		case n == 0:
			return syscall.EIO
		}
		b = b[n:]
		off += uint64(n)
	}
	if fua && !dsync {
		return fdatasync(f.fd)
	}
	return nil
}

// syncWriteZeroes tries the preferred fallocate mode, then ZERO_RANGE, then
// writes zeroes (files) or asks the kernel to (ioctl BLKZEROOUT, which
// keeps the blocks mapped and falls back to writing zeroes itself).
func (f *File) syncWriteZeroes(flags Flags, off, length uint64) error {
	mode := f.zeroMode(flags)
	err := fallocate(f.fd, mode, off, length)
	if err != unix.EOPNOTSUPP {
		return err
	}
	if f.blockDev {
		return blkRangeIoctl(f.fd, unix.BLKZEROOUT, off, length)
	}
	if mode != unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE {
		err = fallocate(f.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err != unix.EOPNOTSUPP {
			return err
		}
	}
	zero, err := zeroBuffer()
	if err != nil {
		return err
	}
	for length > 0 {
		n := min(length, uint64(len(zero)))
		if err := f.pwriteFull(zero[:n], off, false); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

var zeroBuf struct {
	once sync.Once
	b    []byte
	err  error
}

// zeroBuffer is 1 MiB of page-aligned zeroes (never written), the source
// of write-zeroes on filesystems without ZERO_RANGE or PUNCH_HOLE.
func zeroBuffer() ([]byte, error) {
	zeroBuf.once.Do(func() { zeroBuf.b, zeroBuf.err = uring.AlignedBuffer(1 << 20) })
	return zeroBuf.b, zeroBuf.err
}

func fdatasync(fd int) error {
	for {
		if err := unix.Fdatasync(fd); err != unix.EINTR {
			return err
		}
	}
}

// blkRangeIoctl issues BLKDISCARD or BLKZEROOUT for [off, off+length).
func blkRangeIoctl(fd int, req uintptr, off, length uint64) error {
	r := [2]uint64{off, length}
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&r[0])))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}
