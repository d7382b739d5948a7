//go:build linux

package backend

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrClosed is returned by Worker.Submit after Close. Errno(ErrClosed) is
// ESHUTDOWN.
var ErrClosed = fmt.Errorf("backend: worker is closed: %w", syscall.ESHUTDOWN)

// ErrBusy is returned by Worker.Submit for a Request whose previous
// submission has not completed yet (its Done has not been called).
var ErrBusy = fmt.Errorf("backend: request is already in flight: %w", syscall.EBUSY)

// Errno returns the errno an error carries: 0 for nil, the wrapped
// syscall.Errno when there is one, and EIO for any other error.
//
// Every error this package returns for a request wraps a syscall.Errno, so
// that both users can turn it into what they send back: the ublk target
// completes the request with -Errno(err), the exporter maps Errno(err) to a
// wire status. This table is the single place where the mapping is decided.
//
//	Check (before anything reaches the disk)
//	  unknown Op, unknown Flags bits                        EINVAL
//	  FlagNoUnmap on an op other than OpWriteZeroes         EINVAL
//	  length 0 (read, write, discard, write-zeroes)         EINVAL
//	  off or length not a multiple of LogicalBlockSize      EINVAL
//	  off+length overflows uint64                           EINVAL
//	  read that ends beyond Size                            EINVAL
//	  write, discard, write-zeroes that end beyond Size     ENOSPC
//	  write, discard, write-zeroes on a ReadOnly File       EROFS
//	  discard when Caps().Discard is false                  EOPNOTSUPP
//	  any op on a closed File                               EBADF
//	Result and Sync (the kernel's answer)
//	  a negative CQE result or a failed syscall             that errno, unchanged
//	                                                        (EIO, ENOSPC, EDQUOT...)
//	  a short read or write that the synchronous retry
//	  cannot complete either (the file shrank under us)     EIO
//	Worker
//	  Submit after Close                                    ESHUTDOWN (ErrClosed)
//	  Submit of a Request that is still in flight           EBUSY (ErrBusy)
//	  Submit of a Request without Done                      EINVAL
//	  a Request without File (through Done)                 EBADF
//	  a read/write whose Buf is shorter than Length         EINVAL (also Sync)
//
// Flush is never refused by Check (also not on a ReadOnly File, where it is
// a harmless fdatasync); FlagFUA on a read or a flush is ignored.
//
// EROFS rather than EPERM for writes to a read-only export: it is what a
// read-only filesystem or block device returns, and both users map it (the
// NBD exporter to NBD_EPERM, as qemu-nbd does).
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if n, ok := e.(syscall.Errno); ok {
			return n
		}
	}
	var n syscall.Errno
	if errors.As(err, &n) { // joined errors
		return n
	}
	return syscall.EIO
}

// OpError describes a failed request: what was asked of which file, and the
// errno. It unwraps to the errno.
type OpError struct {
	Path string
	Op   Op
	Off  uint64
	Len  uint32
	Err  error // a syscall.Errno, possibly wrapped with more context
}

func (e *OpError) Error() string {
	if e.Op == OpFlush {
		return fmt.Sprintf("backend: flush %s: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("backend: %s %d bytes at offset %d of %s: %v", e.Op, e.Len, e.Off, e.Path, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

func (f *File) opError(op Op, off uint64, length uint32, err error) error {
	return &OpError{Path: f.path, Op: op, Off: off, Len: length, Err: err}
}

// checkError is a refusal by Check: the errno plus why.
type checkError struct {
	errno syscall.Errno
	msg   string
}

func (e *checkError) Error() string { return "backend: " + e.msg + ": " + e.errno.Error() }
func (e *checkError) Unwrap() error { return e.errno }

func refuse(errno syscall.Errno, format string, args ...any) error {
	return &checkError{errno: errno, msg: fmt.Sprintf(format, args...)}
}

// errnoError is an error whose text is msg (which already says what the
// errno would) and which unwraps to errno.
type errnoErr struct {
	errno syscall.Errno
	msg   string
}

func (e *errnoErr) Error() string { return e.msg }
func (e *errnoErr) Unwrap() error { return e.errno }

func errnoError(errno syscall.Errno, format string, args ...any) error {
	return &errnoErr{errno: errno, msg: fmt.Sprintf(format, args...)}
}
