package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Version is the protocol version this package implements (PROTOCOL.md).
const Version uint16 = 1

// Magic numbers, as little-endian uint32 values. On the wire they read as
// the ASCII strings "DSTQ", "DSTR" and "DSTH".
const (
	RequestMagic   uint32 = 0x51545344 // "DSTQ"
	ReplyMagic     uint32 = 0x52545344 // "DSTR"
	HandshakeMagic uint32 = 0x48545344 // "DSTH"
)

// Header sizes in bytes.
const (
	RequestHeaderSize   = 40
	ReplyHeaderSize     = 24
	HandshakeHeaderSize = 12
)

// Limits (PROTOCOL.md §6) and the DST exporter's defaults.
const (
	MaxTransferLimit   = 32 << 20 // largest MAX_TRANSFER an exporter may offer
	MaxInflightLimit   = 65536    // largest MAX_INFLIGHT
	MaxHandshakeBody   = 65536    // largest handshake body
	MaxAttrLen         = 4096     // largest attribute value
	MaxNameLen         = 255      // longest string (export name, client name, reason...)
	DefaultMaxTransfer = 1 << 20
	DefaultMaxInflight = 1024

	// MaxErrno is the largest errno value Linux uses (MAX_ERRNO). A reply
	// status above it is a framing error: it is most likely a negative
	// errno written as an unsigned number.
	MaxErrno = 4095
)

// Op is a request or reply operation.
type Op uint8

// Operations (PROTOCOL.md §3, §4).
const (
	OpRead        Op = 1
	OpWrite       Op = 2
	OpFlush       Op = 3
	OpDiscard     Op = 4
	OpWriteZeroes Op = 5
	OpPing        Op = 16
	OpDisconnect  Op = 17
	OpGoodbye     Op = 18 // reply only: the exporter is going away
)

// String returns the protocol name of the op ("READ", "WRITE_ZEROES"...),
// or "Op(n)" for an unknown value.
func (o Op) String() string {
	switch o {
	case OpRead:
		return "READ"
	case OpWrite:
		return "WRITE"
	case OpFlush:
		return "FLUSH"
	case OpDiscard:
		return "DISCARD"
	case OpWriteZeroes:
		return "WRITE_ZEROES"
	case OpPing:
		return "PING"
	case OpDisconnect:
		return "DISCONNECT"
	case OpGoodbye:
		return "GOODBYE"
	}
	return "Op(" + strconv.Itoa(int(o)) + ")"
}

// IsRequest reports whether o may appear in a request.
func (o Op) IsRequest() bool {
	switch o {
	case OpRead, OpWrite, OpFlush, OpDiscard, OpWriteZeroes, OpPing, OpDisconnect:
		return true
	}
	return false
}

// IsReply reports whether o may appear in a reply: every request op, and
// GOODBYE.
func (o Op) IsReply() bool { return o.IsRequest() || o == OpGoodbye }

// Flags are the request flags.
type Flags uint16

// Request flags (PROTOCOL.md §3).
const (
	FlagFUA     Flags = 1 << 0 // WRITE only: durable when the reply is sent
	FlagNoUnmap Flags = 1 << 1 // WRITE_ZEROES only: keep the range allocated

	knownFlags = FlagFUA | FlagNoUnmap
)

// String lists the flag names separated by "|" ("FUA|NO_UNMAP"), unknown
// bits in hex, or "0" for no flags.
func (f Flags) String() string {
	return bitString(uint64(f), []string{"FUA", "NO_UNMAP"}, "0")
}

// bitString names the set bits of v with names[i] for bit i and the rest as
// one hex number.
func bitString(v uint64, names []string, zero string) string {
	if v == 0 {
		return zero
	}
	var sb strings.Builder
	for i, n := range names {
		if v&(1<<i) != 0 {
			if sb.Len() > 0 {
				sb.WriteByte('|')
			}
			sb.WriteString(n)
			v &^= 1 << i
		}
	}
	if v != 0 {
		if sb.Len() > 0 {
			sb.WriteByte('|')
		}
		sb.WriteString("0x")
		sb.WriteString(strconv.FormatUint(v, 16))
	}
	return sb.String()
}

// ErrFraming is matched (errors.Is) by every *FrameError.
var ErrFraming = errors.New("wire: framing error")

// FrameError is a framing error in a request or reply header (PROTOCOL.md
// §5.2): the byte stream can no longer be trusted and the connection must be
// closed. errors.Is(err, ErrFraming) is true for it.
type FrameError struct {
	Frame  string // "request", "reply" or "handshake"
	Field  string // the offending field: "magic", "op", "flags", "length"...
	Reason string // what is wrong, with the values
}

func (e *FrameError) Error() string {
	return "wire: bad " + e.Frame + ": " + e.Reason
}

// Is makes errors.Is(err, ErrFraming) true.
func (e *FrameError) Is(target error) bool { return target == ErrFraming }

func reqErr(field, format string, args ...any) error {
	return &FrameError{Frame: "request", Field: field, Reason: fmt.Sprintf(format, args...)}
}

func repErr(field, format string, args ...any) error {
	return &FrameError{Frame: "reply", Field: field, Reason: fmt.Sprintf(format, args...)}
}

// magicString renders 4 magic bytes for an error message.
func magicString(b []byte) string { return strconv.Quote(string(b[:4])) }

// Request is a request header (PROTOCOL.md §3).
type Request struct {
	Op     Op
	Flags  Flags
	ID     uint64
	Offset uint64
	Length uint32
	// Floor: the client has received replies for every id below it.
	Floor uint64
}

// PayloadLen is the number of payload bytes that follow the header on the
// wire: Length for a WRITE, else 0. (The trailer, TAG_SIZE bytes, is not
// included; it is 0 in version 1.)
func (r Request) PayloadLen() int {
	if r.Op == OpWrite {
		return int(r.Length)
	}
	return 0
}

// Put encodes r into b[:RequestHeaderSize]. It panics if b is shorter. It
// does not validate r (see Validate); reserved bytes are written as zero.
// It does not allocate.
func (r *Request) Put(b []byte) {
	_ = b[RequestHeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:4], RequestMagic)
	b[4] = byte(r.Op)
	b[5] = 0
	binary.LittleEndian.PutUint16(b[6:8], uint16(r.Flags))
	binary.LittleEndian.PutUint64(b[8:16], r.ID)
	binary.LittleEndian.PutUint64(b[16:24], r.Offset)
	binary.LittleEndian.PutUint32(b[24:28], r.Length)
	binary.LittleEndian.PutUint32(b[28:32], 0)
	binary.LittleEndian.PutUint64(b[32:40], r.Floor)
}

// ParseRequest decodes and validates a request header from b, which must
// hold at least RequestHeaderSize bytes (only the first 40 are looked at).
//
// It enforces every framing rule of PROTOCOL.md §5.2 that is decidable from
// the header alone, given the negotiated maxTransfer (0, or a value above
// MaxTransferLimit, counts as MaxTransferLimit): the magic, a known request
// op, zero reserved bytes, no unknown flag, FUA only on WRITE and NO_UNMAP
// only on WRITE_ZEROES, READ/WRITE length 1..maxTransfer, FLUSH/PING/
// DISCONNECT with offset and length 0, DISCARD/WRITE_ZEROES length ≥ 1.
//
// Range checks against the export (end of export, alignment to the
// logical block, offset+length overflow) are request errors, not framing
// errors, and are left to the exporter; so are MAX_INFLIGHT and the session
// rules on ids.
//
// Every error is a *FrameError. ParseRequest does not allocate unless it
// returns an error.
func ParseRequest(b []byte, maxTransfer uint32) (Request, error) {
	if len(b) < RequestHeaderSize {
		return Request{}, reqErr("header", "header is %d bytes, need %d", len(b), RequestHeaderSize)
	}
	b = b[:RequestHeaderSize]
	if binary.LittleEndian.Uint32(b[0:4]) != RequestMagic {
		return Request{}, reqErr("magic", "magic %s, want \"DSTQ\"", magicString(b))
	}
	if b[5] != 0 || binary.LittleEndian.Uint32(b[28:32]) != 0 {
		return Request{}, reqErr("reserved", "reserved bytes not zero (byte 5 = %#x, bytes 28..31 = %#x)",
			b[5], binary.LittleEndian.Uint32(b[28:32]))
	}
	r := Request{
		Op:     Op(b[4]),
		Flags:  Flags(binary.LittleEndian.Uint16(b[6:8])),
		ID:     binary.LittleEndian.Uint64(b[8:16]),
		Offset: binary.LittleEndian.Uint64(b[16:24]),
		Length: binary.LittleEndian.Uint32(b[24:28]),
		Floor:  binary.LittleEndian.Uint64(b[32:40]),
	}
	if err := r.Validate(maxTransfer); err != nil {
		return Request{}, err
	}
	return r, nil
}

// Validate applies the header rules of ParseRequest (everything but the
// magic and reserved bytes, which a Request cannot hold) to r. A client can
// use it to check a request before it sends it.
func (r *Request) Validate(maxTransfer uint32) error {
	if maxTransfer == 0 || maxTransfer > MaxTransferLimit {
		maxTransfer = MaxTransferLimit
	}
	if !r.Op.IsRequest() {
		if r.Op == OpGoodbye {
			return reqErr("op", "op GOODBYE (18) is reply-only")
		}
		return reqErr("op", "unknown op %d", uint8(r.Op))
	}
	if r.Flags&^knownFlags != 0 {
		return reqErr("flags", "unknown flag bits %#x", uint16(r.Flags&^knownFlags))
	}
	if r.Flags&FlagFUA != 0 && r.Op != OpWrite {
		return reqErr("flags", "flag FUA on %v (WRITE only)", r.Op)
	}
	if r.Flags&FlagNoUnmap != 0 && r.Op != OpWriteZeroes {
		return reqErr("flags", "flag NO_UNMAP on %v (WRITE_ZEROES only)", r.Op)
	}
	switch r.Op {
	case OpRead, OpWrite:
		if r.Length == 0 {
			return reqErr("length", "length 0 for %v", r.Op)
		}
		if r.Length > maxTransfer {
			return reqErr("length", "length %d exceeds max transfer %d", r.Length, maxTransfer)
		}
	case OpDiscard, OpWriteZeroes:
		if r.Length == 0 {
			return reqErr("length", "length 0 for %v", r.Op)
		}
	case OpFlush, OpPing, OpDisconnect:
		if r.Offset != 0 {
			return reqErr("offset", "offset %d for %v (must be 0)", r.Offset, r.Op)
		}
		if r.Length != 0 {
			return reqErr("length", "length %d for %v (must be 0)", r.Length, r.Op)
		}
	}
	return nil
}

// Reply is a reply header (PROTOCOL.md §4).
type Reply struct {
	Op     Op
	ID     uint64
	Status Status
	// Length is the number of payload bytes that follow: non-zero only
	// for a successful READ.
	Length uint32
}

// PayloadLen is the number of payload bytes that follow the header on the
// wire (Length; ParseReply guarantees it is 0 except for a successful READ).
func (r Reply) PayloadLen() int { return int(r.Length) }

// Put encodes r into b[:ReplyHeaderSize]. It panics if b is shorter. It
// does not validate r (see Validate). It does not allocate.
func (r *Reply) Put(b []byte) {
	_ = b[ReplyHeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:4], ReplyMagic)
	b[4] = byte(r.Op)
	b[5] = 0
	binary.LittleEndian.PutUint16(b[6:8], 0)
	binary.LittleEndian.PutUint64(b[8:16], r.ID)
	binary.LittleEndian.PutUint32(b[16:20], uint32(r.Status))
	binary.LittleEndian.PutUint32(b[20:24], r.Length)
}

// ParseReply decodes and validates a reply header from b, which must hold
// at least ReplyHeaderSize bytes (only the first 24 are looked at).
//
// It checks the magic, a known op (a request op or GOODBYE), zero reserved
// byte and flags, a status of 0 or a Linux errno (1..MaxErrno), a non-zero
// Length only for a READ with status 0 and never above MaxTransferLimit,
// status 0 for PING, and id 0 for GOODBYE. Whether the id is outstanding and
// the READ length equals the request's are for the client to check.
//
// Every error is a *FrameError. ParseReply does not allocate unless it
// returns an error.
func ParseReply(b []byte) (Reply, error) {
	if len(b) < ReplyHeaderSize {
		return Reply{}, repErr("header", "header is %d bytes, need %d", len(b), ReplyHeaderSize)
	}
	b = b[:ReplyHeaderSize]
	if binary.LittleEndian.Uint32(b[0:4]) != ReplyMagic {
		return Reply{}, repErr("magic", "magic %s, want \"DSTR\"", magicString(b))
	}
	if b[5] != 0 {
		return Reply{}, repErr("reserved", "reserved byte 5 = %#x, not zero", b[5])
	}
	if f := binary.LittleEndian.Uint16(b[6:8]); f != 0 {
		return Reply{}, repErr("flags", "flags %#x, must be 0 in a reply", f)
	}
	r := Reply{
		Op:     Op(b[4]),
		ID:     binary.LittleEndian.Uint64(b[8:16]),
		Status: Status(binary.LittleEndian.Uint32(b[16:20])),
		Length: binary.LittleEndian.Uint32(b[20:24]),
	}
	if err := r.Validate(); err != nil {
		return Reply{}, err
	}
	return r, nil
}

// Validate applies the header rules of ParseReply (everything but the magic
// and reserved bytes) to r. An exporter can use it before it sends a reply.
func (r *Reply) Validate() error {
	if !r.Op.IsReply() {
		return repErr("op", "unknown op %d", uint8(r.Op))
	}
	if r.Status > MaxErrno {
		return repErr("status", "status %d is not an errno (1..%d)", uint32(r.Status), MaxErrno)
	}
	if r.Length != 0 {
		if r.Op != OpRead {
			return repErr("length", "length %d on a %v reply (only a successful READ has a payload)", r.Length, r.Op)
		}
		if r.Status != 0 {
			return repErr("length", "length %d on a failed READ (status %v)", r.Length, r.Status)
		}
		if r.Length > MaxTransferLimit {
			return repErr("length", "length %d exceeds the transfer limit %d", r.Length, MaxTransferLimit)
		}
	}
	switch r.Op {
	case OpPing:
		if r.Status != 0 {
			return repErr("status", "status %v on a PING reply (must be 0)", r.Status)
		}
	case OpGoodbye:
		if r.ID != 0 {
			return repErr("id", "id %d on GOODBYE (must be 0)", r.ID)
		}
	}
	return nil
}
