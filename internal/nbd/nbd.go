// Package nbd is the codec of the Network Block Device protocol
// (github.com/NetworkBlockDevice/nbd doc/proto.md) as DST's exporter
// speaks it: the fixed newstyle handshake with option haggling (GO, INFO,
// EXPORT_NAME, LIST, ABORT, STRUCTURED_REPLY; INFO_EXPORT, INFO_NAME,
// INFO_DESCRIPTION, INFO_BLOCK_SIZE), the compact transmission request
// header, and simple and structured replies (OFFSET_DATA, NONE and ERROR
// chunks).
//
// Encoders append to a caller's slice and never fail; decoders take
// exactly the bytes of one header or option payload and return a
// *ProtocolError for anything malformed. Every length a peer sends is
// bounded before anything is allocated for it (MaxOptionLen,
// MaxStringLen, MaxPayload). All integers are big-endian (network byte
// order), as the protocol says.
//
// Negotiate (negotiate.go) runs the server side of the handshake over an
// io.ReadWriter against a Handler that knows the exports.
package nbd

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"syscall"
)

// Magic numbers.
const (
	// NBDMagic ("NBDMAGIC") opens the server's greeting.
	NBDMagic uint64 = 0x4e42444d41474943
	// OptMagic ("IHAVEOPT") follows it in the newstyle greeting and opens
	// every option request.
	OptMagic uint64 = 0x49484156454f5054
	// RepMagic opens every option reply.
	RepMagic uint64 = 0x0003e889045565a9
	// RequestMagic opens a (compact) transmission request.
	RequestMagic uint32 = 0x25609513
	// SimpleReplyMagic opens a simple reply.
	SimpleReplyMagic uint32 = 0x67446698
	// StructuredReplyMagic opens a structured reply chunk.
	StructuredReplyMagic uint32 = 0x668e33ef
)

// Sizes and bounds.
const (
	// DefaultPort is the IANA port of NBD.
	DefaultPort = 10809
	// GreetingLen: NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
	GreetingLen = 18
	// OptionHeaderLen: IHAVEOPT, option, length.
	OptionHeaderLen = 16
	// OptionReplyHeaderLen: magic, option, reply type, length.
	OptionReplyHeaderLen = 20
	// RequestLen is the compact request header.
	RequestLen = 28
	// SimpleReplyLen is the simple reply header.
	SimpleReplyLen = 16
	// StructuredReplyLen is the structured reply chunk header.
	StructuredReplyLen = 20
	// ExportNameReplyZeroes pads the EXPORT_NAME reply unless the client
	// set NO_ZEROES.
	ExportNameReplyZeroes = 124
	// MaxStringLen is the longest string (export name, description,
	// error message) the protocol allows.
	MaxStringLen = 4096
	// MaxOptionLen bounds the data of one option request: an INFO or GO
	// with a 4096-byte name and many info requests fits; more is refused
	// (the connection is closed, since the data would have to be read).
	MaxOptionLen = 16 << 10
	// MaxPayload is the largest WRITE payload (and READ reply) this
	// package's users accept: 32 MiB, the size below which the spec says
	// a length must not be considered a denial of service.
	MaxPayload = 32 << 20
)

// Handshake flags (server, 16 bits).
const (
	FlagFixedNewstyle uint16 = 1 << 0
	FlagNoZeroes      uint16 = 1 << 1
)

// Client flags (32 bits).
const (
	ClientFixedNewstyle uint32 = 1 << 0
	ClientNoZeroes      uint32 = 1 << 1
	knownClientFlags           = ClientFixedNewstyle | ClientNoZeroes
)

// Option is an option request type.
type Option uint32

// Options.
const (
	OptExportName      Option = 1
	OptAbort           Option = 2
	OptList            Option = 3
	OptPeekExport      Option = 4
	OptStartTLS        Option = 5
	OptInfo            Option = 6
	OptGo              Option = 7
	OptStructuredReply Option = 8
	OptListMetaContext Option = 9
	OptSetMetaContext  Option = 10
	OptExtendedHeaders Option = 11
)

var optNames = map[Option]string{
	OptExportName: "EXPORT_NAME", OptAbort: "ABORT", OptList: "LIST", OptPeekExport: "PEEK_EXPORT",
	OptStartTLS: "STARTTLS", OptInfo: "INFO", OptGo: "GO", OptStructuredReply: "STRUCTURED_REPLY",
	OptListMetaContext: "LIST_META_CONTEXT", OptSetMetaContext: "SET_META_CONTEXT",
	OptExtendedHeaders: "EXTENDED_HEADERS",
}

func (o Option) String() string {
	if s, ok := optNames[o]; ok {
		return s
	}
	return "OPT(" + strconv.FormatUint(uint64(o), 10) + ")"
}

// ReplyType is an option reply type. Error replies have bit 31 set.
type ReplyType uint32

// Option reply types.
const (
	RepAck         ReplyType = 1
	RepServer      ReplyType = 2
	RepInfo        ReplyType = 3
	RepMetaContext ReplyType = 4

	RepFlagError        ReplyType = 1 << 31
	RepErrUnsup                   = RepFlagError | 1
	RepErrPolicy                  = RepFlagError | 2
	RepErrInvalid                 = RepFlagError | 3
	RepErrPlatform                = RepFlagError | 4
	RepErrTLSReqd                 = RepFlagError | 5
	RepErrUnknown                 = RepFlagError | 6
	RepErrShutdown                = RepFlagError | 7
	RepErrBlockSizeReqd           = RepFlagError | 8
	RepErrTooBig                  = RepFlagError | 9
	RepErrExtHeaderReqd           = RepFlagError | 10
)

// IsError reports whether t is an error reply.
func (t ReplyType) IsError() bool { return t&RepFlagError != 0 }

// InfoType is an information type of NBD_OPT_INFO / NBD_OPT_GO.
type InfoType uint16

// Information types.
const (
	InfoExport      InfoType = 0
	InfoName        InfoType = 1
	InfoDescription InfoType = 2
	InfoBlockSize   InfoType = 3
)

// TransmissionFlags describe an export (16 bits).
type TransmissionFlags uint16

// Transmission flags.
const (
	FlagHasFlags        TransmissionFlags = 1 << 0
	FlagReadOnly        TransmissionFlags = 1 << 1
	FlagSendFlush       TransmissionFlags = 1 << 2
	FlagSendFUA         TransmissionFlags = 1 << 3
	FlagRotational      TransmissionFlags = 1 << 4
	FlagSendTrim        TransmissionFlags = 1 << 5
	FlagSendWriteZeroes TransmissionFlags = 1 << 6
	FlagSendDF          TransmissionFlags = 1 << 7
	FlagCanMultiConn    TransmissionFlags = 1 << 8
	FlagSendResize      TransmissionFlags = 1 << 9
	FlagSendCache       TransmissionFlags = 1 << 10
	FlagSendFastZero    TransmissionFlags = 1 << 11
)

var tflagNames = []string{"HAS_FLAGS", "READ_ONLY", "SEND_FLUSH", "SEND_FUA", "ROTATIONAL", "SEND_TRIM",
	"SEND_WRITE_ZEROES", "SEND_DF", "CAN_MULTI_CONN", "SEND_RESIZE", "SEND_CACHE", "SEND_FAST_ZERO"}

func (f TransmissionFlags) String() string {
	s := ""
	for i, n := range tflagNames {
		if f&(1<<i) != 0 {
			if s != "" {
				s += "|"
			}
			s += n
		}
	}
	if rest := f &^ (1<<len(tflagNames) - 1); rest != 0 {
		if s != "" {
			s += "|"
		}
		s += fmt.Sprintf("%#x", uint16(rest))
	}
	if s == "" {
		return "0"
	}
	return s
}

// Cmd is a transmission command.
type Cmd uint16

// Commands.
const (
	CmdRead        Cmd = 0
	CmdWrite       Cmd = 1
	CmdDisc        Cmd = 2
	CmdFlush       Cmd = 3
	CmdTrim        Cmd = 4
	CmdCache       Cmd = 5
	CmdWriteZeroes Cmd = 6
	CmdBlockStatus Cmd = 7
	CmdResize      Cmd = 8
)

var cmdNames = []string{"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS", "RESIZE"}

func (c Cmd) String() string {
	if int(c) < len(cmdNames) {
		return cmdNames[c]
	}
	return "CMD(" + strconv.Itoa(int(c)) + ")"
}

// CmdFlags modify a command.
type CmdFlags uint16

// Command flags.
const (
	CmdFlagFUA        CmdFlags = 1 << 0
	CmdFlagNoHole     CmdFlags = 1 << 1
	CmdFlagDF         CmdFlags = 1 << 2
	CmdFlagReqOne     CmdFlags = 1 << 3
	CmdFlagFastZero   CmdFlags = 1 << 4
	CmdFlagPayloadLen CmdFlags = 1 << 5
)

// Errno is an NBD error value. The protocol's values equal Linux's.
type Errno uint32

// Error values of the protocol.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

func (e Errno) String() string {
	switch e {
	case 0:
		return "OK"
	case EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN:
		return syscall.Errno(e).Error()
	}
	return "errno(" + strconv.FormatUint(uint64(e), 10) + ")"
}

// FromErrno maps a local errno to the protocol's: the values the
// protocol defines pass through (EOPNOTSUPP is ENOTSUP), EROFS and
// EACCES are EPERM, EDQUOT and EFBIG are ENOSPC, anything else is EIO.
func FromErrno(e syscall.Errno) Errno {
	switch e {
	case 0:
		return 0
	case syscall.EPERM, syscall.EROFS, syscall.EACCES:
		return EPERM
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ENOSPC
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.EOPNOTSUPP:
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}

// Structured reply chunk types and flags.
const (
	ChunkFlagDone uint16 = 1 << 0

	ChunkNone        uint16 = 0
	ChunkOffsetData  uint16 = 1
	ChunkOffsetHole  uint16 = 2
	ChunkBlockStatus uint16 = 5
	ChunkError       uint16 = 1<<15 + 1
	ChunkErrorOffset uint16 = 1<<15 + 2
)

// A ProtocolError is malformed input from the peer: the connection cannot
// go on (the byte stream is no longer trustworthy) unless the caller
// knows better.
type ProtocolError struct {
	What   string // the message or field
	Reason string
}

func (e *ProtocolError) Error() string { return "nbd: " + e.What + ": " + e.Reason }

func perr(what, format string, args ...any) error {
	return &ProtocolError{What: what, Reason: fmt.Sprintf(format, args...)}
}

var be = binary.BigEndian
