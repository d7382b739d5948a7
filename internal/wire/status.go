package wire

import (
	"errors"
	"runtime"
	"strconv"
	"syscall"
)

// Status is a reply status: 0 for success, else a Linux errno value
// (PROTOCOL.md §4). The numbers are Linux's on every platform; this file is
// the one place that maps between Go errors and statuses.
type Status uint32

// Statuses in use (PROTOCOL.md §4), with their Linux values.
const (
	StatusOK         Status = 0
	StatusEPERM      Status = 1   // write on a read-only session
	StatusEIO        Status = 5   // disk error, or any error without an errno
	StatusEINVAL     Status = 22  // misaligned, zero length, beyond the end
	StatusENOSPC     Status = 28  // out of space
	StatusEROFS      Status = 30  // write to a read-only export
	StatusEOPNOTSUPP Status = 95  // op or flag not in effect
	StatusESTALE     Status = 116 // id the exporter can no longer vouch for
)

// named lists the statuses with a name, with the host's errno for each.
var named = []struct {
	s    Status
	name string
	errn syscall.Errno
}{
	{StatusEPERM, "EPERM", syscall.EPERM},
	{StatusEIO, "EIO", syscall.EIO},
	{StatusEINVAL, "EINVAL", syscall.EINVAL},
	{StatusENOSPC, "ENOSPC", syscall.ENOSPC},
	{StatusEROFS, "EROFS", syscall.EROFS},
	{StatusEOPNOTSUPP, "EOPNOTSUPP", syscall.EOPNOTSUPP},
	{StatusESTALE, "ESTALE", syscall.ESTALE},
}

// errnoIsLinux: the host's errno numbers are Linux's, so any errno maps to
// itself. Elsewhere only the named statuses are translated.
var errnoIsLinux = runtime.GOOS == "linux" || runtime.GOOS == "android"

// StatusOf maps an error to the status to put in a reply: nil → 0; an error
// that wraps a syscall.Errno (errors.As) → that errno; anything else,
// including syscall.Errno(0) and errnos above MaxErrno, → EIO. A non-nil
// error never maps to success.
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) || errno == 0 {
		return StatusEIO
	}
	if errnoIsLinux {
		if uint64(errno) > MaxErrno {
			return StatusEIO
		}
		return Status(errno)
	}
	for _, n := range named {
		if n.errn == errno {
			return n.s
		}
	}
	return StatusEIO
}

// Err maps a status back to an error: 0 → nil, else the syscall.Errno, so
// that errors.Is(s.Err(), syscall.EROFS) and friends work.
func (s Status) Err() error {
	if s == StatusOK {
		return nil
	}
	if errnoIsLinux {
		return syscall.Errno(s)
	}
	for _, n := range named {
		if n.s == s {
			return n.errn
		}
	}
	return syscall.EIO
}

// String returns "OK", the errno name for the statuses in use ("EROFS"),
// or "errno N" for others.
func (s Status) String() string {
	if s == StatusOK {
		return "OK"
	}
	for _, n := range named {
		if n.s == s {
			return n.name
		}
	}
	return "errno " + strconv.FormatUint(uint64(s), 10)
}
