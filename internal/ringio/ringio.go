// Package ringio moves a byte stream through an io_uring ring: a Sender
// that keeps one WRITEV in flight on a socket and a Receiver that keeps one
// RECV in flight. They let a single thread that owns a ring serve its
// network connection, its storage and (for ublk) its block queue with one
// wait per batch, instead of handing every request between goroutines:
// under a slow CPU the thread wake-ups are what costs, not the bytes.
//
// Both types belong to the goroutine that owns the ring (see
// internal/uring). They take the SQE from a caller-supplied function and
// hand back results through Complete, called by the owner when a CQE with
// their user data arrives.
package ringio

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/uring"
)

// GetSQE returns a free SQE of the owner's ring (never nil).
type GetSQE func() *uring.SQE

// maxIov is the kernel's IOV_MAX.
const maxIov = 1024

// ErrClosed is returned once the peer has closed the stream.
var ErrClosed = errors.New("ringio: connection closed by peer")

// DetachFd takes the socket of conn for use with io_uring: it duplicates
// the descriptor, closes conn (so Go's poller forgets it) and puts the
// duplicate in blocking mode (io_uring then waits for readiness itself
// instead of failing with EAGAIN). The caller closes the returned fd.
func DetachFd(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("ringio: %T has no file descriptor", conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.Dup(int(fd)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("ringio: dup socket: %w", derr)
	}
	conn.Close()
	unix.CloseOnExec(nfd)
	if err := unix.SetNonblock(nfd, false); err != nil {
		unix.Close(nfd)
		return -1, fmt.Errorf("ringio: socket to blocking mode: %w", err)
	}
	return nfd, nil
}

// Sender writes queued slices to fd with one WRITEV at a time. Slices must
// stay valid (and unchanged) until the Flush that took them is reported
// done by Complete.
type Sender struct {
	fd      int
	ud      uint64
	pending [][]byte // queued, not yet in flight
	flight  [][]byte // in the current WRITEV (progressively trimmed)
	iov     []unix.Iovec
	busy    bool
	sentNow int // slices of pending taken by the current flight
	msg     unix.Msghdr
}

// NewSender returns a Sender for fd whose CQEs carry user data ud.
func NewSender(fd int, ud uint64) *Sender {
	return &Sender{fd: fd, ud: ud, iov: make([]unix.Iovec, maxIov),
		pending: make([][]byte, 0, 64), flight: make([][]byte, 0, maxIov)}
}

// Queue adds slices to send after those already queued.
func (s *Sender) Queue(b ...[]byte) {
	for _, x := range b {
		if len(x) > 0 {
			s.pending = append(s.pending, x)
		}
	}
}

// Pending reports queued bytes that are not in flight yet.
func (s *Sender) Pending() int { return len(s.pending) }

// Busy reports whether a WRITEV is in flight.
func (s *Sender) Busy() bool { return s.busy }

// Flush starts a WRITEV of the queued slices (up to IOV_MAX of them) if
// none is in flight; it reports whether it started one.
func (s *Sender) Flush(get GetSQE) bool {
	if s.busy || len(s.pending) == 0 {
		return false
	}
	n := min(len(s.pending), maxIov)
	s.flight = append(s.flight[:0], s.pending[:n]...)
	// Keep the rest queued, in order.
	rest := copy(s.pending, s.pending[n:])
	clear(s.pending[rest:])
	s.pending = s.pending[:rest]
	s.sentNow = n
	s.busy = true
	s.prep(get)
	return true
}

func (s *Sender) prep(get GetSQE) {
	for i, b := range s.flight {
		s.iov[i].Base = &b[0]
		s.iov[i].SetLen(len(b))
	}
	sqe := get()
	sqe.PrepWritev(s.fd, s.iov[:len(s.flight)], ^uint64(0), 0)
	sqe.SetUserData(s.ud)
}

// Complete handles the CQE of the WRITEV. It returns done=true when every
// slice of the flight has been written (the caller may then release them),
// or an error when the connection failed; a partial write is continued.
func (s *Sender) Complete(res int32, get GetSQE) (done bool, err error) {
	if !s.busy {
		return false, fmt.Errorf("ringio: send completion with nothing in flight")
	}
	if res < 0 {
		s.busy = false
		return false, fmt.Errorf("ringio: send: %w", syscall.Errno(-res))
	}
	if res == 0 {
		s.busy = false
		return false, fmt.Errorf("ringio: send wrote nothing: %w", ErrClosed)
	}
	n := int(res)
	i := 0
	for i < len(s.flight) && n >= len(s.flight[i]) {
		n -= len(s.flight[i])
		i++
	}
	if i == len(s.flight) {
		s.flight = s.flight[:0]
		s.busy = false
		return true, nil
	}
	rest := copy(s.flight, s.flight[i:])
	s.flight = s.flight[:rest]
	s.flight[0] = s.flight[0][n:]
	s.prep(get)
	return false, nil
}

// Push writes the queued slices now, with one non-blocking sendmsg, when
// no WRITEV is in flight, and reports whether all of them were written.
// What the socket does not take stays queued, in order, for Flush. A
// sender that produces a batch piece by piece (sealing frames) pushes
// each piece as it is ready, so the peer starts working on it while the
// rest is produced, instead of waiting for the whole batch's WRITEV. The
// slices written are released as soon as Push returns: the kernel has
// copied them.
func (s *Sender) Push() (bool, error) {
	if s.busy {
		return false, nil
	}
	for len(s.pending) > 0 {
		n := min(len(s.pending), maxIov)
		for i, b := range s.pending[:n] {
			s.iov[i].Base = &b[0]
			s.iov[i].SetLen(len(b))
		}
		s.msg.Iov = &s.iov[0]
		s.msg.SetIovlen(n)
		r, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msg)),
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		s.msg.Iov = nil
		switch {
		case e == unix.EAGAIN || e == unix.EINTR:
			return false, nil
		case e != 0:
			return false, fmt.Errorf("ringio: send: %w", e)
		}
		w := int(r)
		i := 0
		for i < len(s.pending) && w >= len(s.pending[i]) {
			w -= len(s.pending[i])
			i++
		}
		rest := copy(s.pending, s.pending[i:])
		clear(s.pending[rest:])
		s.pending = s.pending[:rest]
		if w > 0 {
			s.pending[0] = s.pending[0][w:]
		}
		if i < n {
			return false, nil // the socket is full
		}
	}
	return true, nil
}

// Abort forgets everything queued or in flight (after a connection error;
// the caller must still wait for an in-flight CQE before releasing the
// slices, since the kernel may be reading them).
func (s *Sender) Abort() {
	clear(s.pending)
	s.pending = s.pending[:0]
}

// Receiver reads the stream into a staging buffer with one RECV at a
// time, and can instead receive directly into a caller's buffer (for large
// payloads, which then skip the copy).
type Receiver struct {
	fd   int
	ud   uint64
	buf  []byte
	r, w int
	// direct receive in progress into dst[got:]
	dst  []byte
	got  int
	busy bool
	eof  bool
}

// NewReceiver returns a Receiver for fd with a staging buffer of size
// bytes, whose CQEs carry user data ud.
func NewReceiver(fd int, ud uint64, size int) *Receiver {
	return &Receiver{fd: fd, ud: ud, buf: make([]byte, size)}
}

// Busy reports whether a RECV is in flight.
func (r *Receiver) Busy() bool { return r.busy }

// Buffered returns the bytes received and not consumed.
func (r *Receiver) Buffered() []byte { return r.buf[r.r:r.w] }

// Consume marks n buffered bytes as used.
func (r *Receiver) Consume(n int) {
	r.r += n
	if r.r == r.w {
		r.r, r.w = 0, 0
	}
}

// Arm starts a RECV into the staging buffer if none is in flight and
// there is room (it compacts the buffer first). It reports whether it did.
func (r *Receiver) Arm(get GetSQE) bool {
	if r.busy || r.eof {
		return false
	}
	if r.r > 0 && (r.w == len(r.buf) || r.r > len(r.buf)/2) {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	if r.w == len(r.buf) {
		return false // full: the caller must consume first
	}
	r.busy = true
	sqe := get()
	sqe.PrepRecv(r.fd, r.buf[r.w:], 0)
	sqe.SetUserData(r.ud)
	return true
}

// ReadInto fills dst from the buffered bytes and, when they do not
// suffice, starts a direct RECV into the rest of dst (MSG_WAITALL). It
// returns true when dst is complete now; otherwise Complete reports the
// end of the direct receive. No staging RECV may be in flight.
func (r *Receiver) ReadInto(dst []byte, get GetSQE) (bool, error) {
	if r.busy {
		return false, fmt.Errorf("ringio: ReadInto with a receive in flight")
	}
	n := copy(dst, r.buf[r.r:r.w])
	r.Consume(n)
	if n == len(dst) {
		return true, nil
	}
	if r.eof {
		return false, ErrClosed
	}
	r.dst, r.got = dst, n
	r.busy = true
	r.prepDirect(get)
	return false, nil
}

func (r *Receiver) prepDirect(get GetSQE) {
	sqe := get()
	sqe.PrepRecv(r.fd, r.dst[r.got:], unix.MSG_WAITALL)
	sqe.SetUserData(r.ud)
}

// Complete handles a RECV completion. direct reports that a ReadInto
// target was completed by it. An error (or the peer closing) ends the
// stream.
func (r *Receiver) Complete(res int32, get GetSQE) (direct bool, err error) {
	r.busy = false
	if res < 0 {
		if res == -int32(unix.EINTR) || res == -int32(unix.EAGAIN) {
			if r.dst != nil {
				r.busy = true
				r.prepDirect(get)
			}
			return false, nil
		}
		r.dst = nil
		return false, fmt.Errorf("ringio: recv: %w", syscall.Errno(-res))
	}
	if res == 0 {
		r.eof = true
		r.dst = nil
		return false, ErrClosed
	}
	if r.dst != nil {
		r.got += int(res)
		if r.got < len(r.dst) {
			r.busy = true
			r.prepDirect(get)
			return false, nil
		}
		r.dst = nil
		return true, nil
	}
	r.w += int(res)
	return false, nil
}
