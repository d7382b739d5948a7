//go:build linux

package uring

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Opcodes (enum io_uring_op).
const (
	OpNop           = 0
	OpReadv         = 1
	OpWritev        = 2
	OpFsync         = 3
	OpReadFixed     = 4
	OpWriteFixed    = 5
	OpPollAdd       = 6
	OpTimeout       = 11
	OpTimeoutRemove = 12
	OpAsyncCancel   = 14
	OpLinkTimeout   = 15
	OpFallocate     = 17
	OpRead          = 22
	OpWrite         = 23
	OpSend          = 26
	OpRecv          = 27
	OpURingCmd      = 46
)

// SQE flags.
const (
	SQEFixedFile      = 1 << 0
	SQEIODrain        = 1 << 1
	SQEIOLink         = 1 << 2
	SQEIOHardlink     = 1 << 3
	SQEAsync          = 1 << 4
	SQECQESkipSuccess = 1 << 6
)

// Flags for FSYNC and TIMEOUT.
const (
	FsyncDatasync  = 1 << 0
	TimeoutAbs     = 1 << 0
	TimeoutETimeOK = 1 << 5 // a count-satisfied timeout completes with 0, not -ETIME
)

// Socket URING_CMD sub-commands (SOCKET_URING_OP_*).
const (
	SocketOpSIOCINQ    = 0
	SocketOpSIOCOUTQ   = 1
	SocketOpGetsockopt = 2
	SocketOpSetsockopt = 3
)

// SQE is the kernel's struct io_uring_sqe (64 bytes; on an SQE128 ring the
// next 64 bytes extend the command area, see Ring.Cmd80). It lives in the
// ring's shared memory: obtain it from Ring.GetSQE and fill it before the
// next Submit.
type SQE struct {
	Opcode      uint8
	Flags       uint8
	IoPrio      uint16
	Fd          int32
	Off         uint64 // offset; addr2; cmd_op (low 32 bits) for URING_CMD
	Addr        uint64 // buffer or iovec address; level/optname for sockopt
	Len         uint32
	OpFlags     uint32 // rw_flags, fsync_flags, timeout_flags, uring_cmd_flags...
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	FileIndex   int32  // splice_fd_in, file_index, optlen
	Addr3       uint64 // start of the URING_CMD payload (cmd[])
	pad2        uint64
}

// escapeSink and alwaysFalse make escape() opaque to the compiler: any
// pointer handed to escape is treated as stored in a global, so it lives on
// the heap, where it cannot move. At run time nothing is stored.
var (
	escapeSink  unsafe.Pointer
	alwaysFalse bool
)

func escape(p unsafe.Pointer) uint64 {
	if alwaysFalse {
		escapeSink = p
	}
	return uint64(uintptr(p))
}

func bufAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return escape(unsafe.Pointer(&b[0]))
}

func (s *SQE) prepRW(op uint8, fd int, addr uint64, n uint32, off uint64) {
	s.Opcode = op
	s.Fd = int32(fd)
	s.Addr = addr
	s.Len = n
	s.Off = off
}

// SetUserData sets the value returned in the CQE.
func (s *SQE) SetUserData(ud uint64) { s.UserData = ud }

// SetFlags ORs IOSQE_* flags into the entry (e.g. SQEIOLink).
func (s *SQE) SetFlags(f uint8) { s.Flags |= f }

// PrepNop prepares a no-op.
func (s *SQE) PrepNop() { s.Opcode = OpNop }

// PrepRead reads len(buf) bytes at off into buf.
func (s *SQE) PrepRead(fd int, buf []byte, off uint64) {
	s.prepRW(OpRead, fd, bufAddr(buf), uint32(len(buf)), off)
}

// PrepWrite writes buf at off; rwFlags are RWF_* (e.g. unix.RWF_DSYNC for
// a FUA write).
func (s *SQE) PrepWrite(fd int, buf []byte, off uint64, rwFlags uint32) {
	s.prepRW(OpWrite, fd, bufAddr(buf), uint32(len(buf)), off)
	s.OpFlags = rwFlags
}

// PrepReadv reads into iovs at off.
func (s *SQE) PrepReadv(fd int, iovs []unix.Iovec, off uint64, rwFlags uint32) {
	var p uint64
	if len(iovs) > 0 {
		p = escape(unsafe.Pointer(&iovs[0]))
	}
	s.prepRW(OpReadv, fd, p, uint32(len(iovs)), off)
	s.OpFlags = rwFlags
}

// PrepWritev writes iovs at off; rwFlags are RWF_* (unix.RWF_DSYNC...).
func (s *SQE) PrepWritev(fd int, iovs []unix.Iovec, off uint64, rwFlags uint32) {
	var p uint64
	if len(iovs) > 0 {
		p = escape(unsafe.Pointer(&iovs[0]))
	}
	s.prepRW(OpWritev, fd, p, uint32(len(iovs)), off)
	s.OpFlags = rwFlags
}

// PrepReadFixed reads into buf, which must lie inside registered buffer
// bufIndex (see RegisterBuffers).
func (s *SQE) PrepReadFixed(fd int, buf []byte, off uint64, bufIndex uint16) {
	s.prepRW(OpReadFixed, fd, bufAddr(buf), uint32(len(buf)), off)
	s.BufIndex = bufIndex
}

// PrepWriteFixed writes buf, which must lie inside registered buffer
// bufIndex.
func (s *SQE) PrepWriteFixed(fd int, buf []byte, off uint64, bufIndex uint16, rwFlags uint32) {
	s.prepRW(OpWriteFixed, fd, bufAddr(buf), uint32(len(buf)), off)
	s.BufIndex = bufIndex
	s.OpFlags = rwFlags
}

// PrepFsync syncs fd; flags FsyncDatasync makes it fdatasync.
func (s *SQE) PrepFsync(fd int, flags uint32) {
	s.prepRW(OpFsync, fd, 0, 0, 0)
	s.OpFlags = flags
}

// PrepFallocate calls fallocate(fd, mode, off, length): with
// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE it discards, with
// FALLOC_FL_ZERO_RANGE|FALLOC_FL_KEEP_SIZE it zeroes.
func (s *SQE) PrepFallocate(fd int, mode uint32, off, length uint64) {
	s.prepRW(OpFallocate, fd, length, mode, off)
}

// PrepRecv receives into buf from socket fd; flags are MSG_* (e.g.
// MSG_WAITALL).
func (s *SQE) PrepRecv(fd int, buf []byte, flags uint32) {
	s.prepRW(OpRecv, fd, bufAddr(buf), uint32(len(buf)), 0)
	s.OpFlags = flags
}

// PrepSend sends buf on socket fd; flags are MSG_*.
func (s *SQE) PrepSend(fd int, buf []byte, flags uint32) {
	s.prepRW(OpSend, fd, bufAddr(buf), uint32(len(buf)), 0)
	s.OpFlags = flags
}

// PrepReadEventfd arms an 8-byte read of an eventfd counter into *val. The
// read completes when another goroutine writes the eventfd: the way other
// goroutines wake a ring's owner without touching the ring.
func (s *SQE) PrepReadEventfd(efd int, val *uint64) {
	s.prepRW(OpRead, efd, escape(unsafe.Pointer(val)), 8, 0)
}

// PrepTimeout completes after ts elapses (or when count other completions
// have been posted, if count > 0) with -ETIME. ts is copied at Submit.
func (s *SQE) PrepTimeout(ts *unix.Timespec, count uint32, flags uint32) {
	s.prepRW(OpTimeout, -1, escape(unsafe.Pointer(ts)), 1, uint64(count))
	s.OpFlags = flags
}

// PrepLinkTimeout bounds the previous linked SQE by ts.
func (s *SQE) PrepLinkTimeout(ts *unix.Timespec) {
	s.prepRW(OpLinkTimeout, -1, escape(unsafe.Pointer(ts)), 1, 0)
}

// PrepCancel cancels the in-flight request whose user_data is target.
func (s *SQE) PrepCancel(target uint64) {
	s.prepRW(OpAsyncCancel, -1, target, 0, 0)
}

// PrepURingCmd prepares IORING_OP_URING_CMD for fd with the 32-bit command
// op. The payload goes in Cmd16 (or Ring.Cmd80 on an SQE128 ring).
func (s *SQE) PrepURingCmd(fd int, cmdOp uint32) {
	s.Opcode = OpURingCmd
	s.Fd = int32(fd)
	s.Off = uint64(cmdOp) // cmd_op at offset 8, __pad1 at 12 stays 0
}

// Cmd16 returns the 16-byte URING_CMD payload area of a 64-byte SQE.
func (s *SQE) Cmd16() *[16]byte { return (*[16]byte)(unsafe.Pointer(&s.Addr3)) }

// PrepGetsockopt prepares SOCKET_URING_OP_GETSOCKOPT on a socket: the
// kernel writes the option into optval; the CQE result is the length.
func (s *SQE) PrepGetsockopt(fd int, level, optname uint32, optval []byte) {
	s.PrepURingCmd(fd, SocketOpGetsockopt)
	s.Addr = uint64(level) | uint64(optname)<<32
	s.FileIndex = int32(len(optval))
	s.Addr3 = bufAddr(optval)
}
