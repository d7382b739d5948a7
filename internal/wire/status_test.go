package wire

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"syscall"
	"testing"
)

func TestStatusRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		s     Status
		name  string
	}{
		{syscall.EPERM, StatusEPERM, "EPERM"},
		{syscall.EIO, StatusEIO, "EIO"},
		{syscall.EINVAL, StatusEINVAL, "EINVAL"},
		{syscall.ENOSPC, StatusENOSPC, "ENOSPC"},
		{syscall.EROFS, StatusEROFS, "EROFS"},
		{syscall.EOPNOTSUPP, StatusEOPNOTSUPP, "EOPNOTSUPP"},
		{syscall.ESTALE, StatusESTALE, "ESTALE"},
	} {
		if got := StatusOf(tc.errno); got != tc.s {
			t.Errorf("StatusOf(%v) = %d, want %d", tc.errno, got, tc.s)
		}
		// Wrapped, as the os package and callers do.
		wrapped := fmt.Errorf("export: %w", &fs.PathError{Op: "pwrite", Path: "/dev/x", Err: tc.errno})
		if got := StatusOf(wrapped); got != tc.s {
			t.Errorf("StatusOf(%v) = %d, want %d", wrapped, got, tc.s)
		}
		err := tc.s.Err()
		if !errors.Is(err, tc.errno) {
			t.Errorf("Status(%d).Err() = %v, does not match %v", tc.s, err, tc.errno)
		}
		if got := StatusOf(err); got != tc.s {
			t.Errorf("StatusOf(Status(%d).Err()) = %d", tc.s, got)
		}
		if got := tc.s.String(); got != tc.name {
			t.Errorf("String = %q, want %q", got, tc.name)
		}
	}
}

func TestStatusLinuxNumbers(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the host's errno numbers are not Linux's")
	}
	for _, n := range named {
		if uint32(n.errn) != uint32(n.s) {
			t.Errorf("%s: host %d, protocol %d", n.name, n.errn, n.s)
		}
	}
	// Errnos not in the table pass through unchanged on Linux.
	if got := StatusOf(syscall.ENOENT); got != 2 {
		t.Errorf("StatusOf(ENOENT) = %d", got)
	}
	if !errors.Is(Status(2).Err(), fs.ErrNotExist) {
		t.Errorf("Status(2).Err() = %v", Status(2).Err())
	}
}

func TestStatusOfOther(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Status
	}{
		{nil, StatusOK},
		{errors.New("something broke"), StatusEIO},
		{io.ErrUnexpectedEOF, StatusEIO},
		{os.ErrDeadlineExceeded, StatusEIO},
		{syscall.Errno(0), StatusEIO},    // a non-nil error never maps to success
		{syscall.Errno(5000), StatusEIO}, // not an errno the wire can carry
		{fmt.Errorf("x: %w", syscall.Errno(0)), StatusEIO},
	} {
		if got := StatusOf(tc.err); got != tc.want {
			t.Errorf("StatusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if err := StatusOK.Err(); err != nil {
		t.Errorf("StatusOK.Err() = %v", err)
	}
	if s := StatusOK.String(); s != "OK" {
		t.Errorf("StatusOK.String() = %q", s)
	}
	if s := Status(2).String(); s != "errno 2" {
		t.Errorf("Status(2).String() = %q", s)
	}
}
