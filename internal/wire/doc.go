// Package wire implements the encoding of the DST wire protocol, version 1,
// as specified in docs/PROTOCOL.md: the handshake (HELLO, WELCOME, REFUSE
// and their attributes), request and reply headers, reply statuses, and
// framers that split a byte stream into frames.
//
// It encodes, decodes and validates what can be decided from one message.
// The rules that need more context (MAX_INFLIGHT, ranges against the export
// size and logical block, session records and ids, feature negotiation) are
// implemented by the exporter and the client.
//
// # Headers
//
// Request.Put / ParseRequest and Reply.Put / ParseReply work on fixed-size
// headers (RequestHeaderSize, ReplyHeaderSize) and do not allocate unless
// they return an error. Every header error is a *FrameError
// (errors.Is(err, ErrFraming)): a framing error of PROTOCOL.md §5.2, after
// which the connection must be closed. The payload (PayloadLen bytes) and
// the trailer (TAG_SIZE bytes, 0 in version 1) are the caller's to read.
//
// # Handshake
//
// WriteHello, WriteWelcome and WriteRefuse validate the message and send it
// with one Write. ReadHello (exporter) and ReadWelcome (client) read one
// message with io.ReadFull, allocating at most the declared body, which is
// checked against MaxHandshakeBody before anything is allocated. Rule
// violations are *HandshakeError (errors.Is(err, ErrHandshake)) carrying the
// REFUSE code an exporter answers with; a REFUSE read by the client is a
// *RefuseError. The checks run in this order, so the code is deterministic:
// header; body structure (truncation, value length, duplicates, exact
// length) → MALFORMED; an unknown critical attribute → UNSUPPORTED; value
// sizes and ranges → MALFORMED; missing required attributes → MALFORMED.
//
// # Readings of PROTOCOL.md
//
// Where the specification is silent or ambiguous this package takes the
// stricter reading:
//
//   - A known flag on the wrong op (FUA other than on WRITE, NO_UNMAP
//     other than on WRITE_ZEROES) is a framing error, like an unknown flag.
//     A known flag whose feature is not in effect is a request error
//     (EOPNOTSUPP) for the exporter to answer.
//   - A reply status above 4095 (Linux MAX_ERRNO) is a framing error: it is
//     not an errno, most likely a negative one written unsigned. So is a
//     PING reply with a non-zero status, and a READ reply whose length is
//     above MaxTransferLimit.
//   - Strings (client name, exporter name, reason) must be valid UTF-8 of at
//     most 255 bytes; the REASON too.
//   - The export names "." and ".." are refused although the charset allows
//     them: an exporter may map names to paths.
//   - HELLO MAX_INFLIGHT, when present, must be 1..65536 (§6 bounds
//     MAX_INFLIGHT); WELCOME PHYSICAL_BLOCK and DISCARD_GRANULARITY, when
//     present, must not be 0; DISCARD_GRANULARITY must be a multiple of
//     LOGICAL_BLOCK; EXPORT_SIZE must be at most 2^63-1 (offsets are off_t).
//   - A missing PHYSICAL_BLOCK means LOGICAL_BLOCK; so does a missing
//     DISCARD_GRANULARITY when DISCARD is in SERVER_FEATURES.
//   - REFUSE requires CODE, not 0; any header version is accepted for a
//     REFUSE (a VERSION refusal carries the exporter's version). A WELCOME
//     whose version is above Version is refused by the client (Code
//     VERSION).
//   - "A body longer than its header says" cannot be seen by a stream
//     reader; it is read as: the attributes must consume the declared body
//     exactly.
//
// # Statuses
//
// StatusOf and Status.Err are the one mapping between Go errors and reply
// statuses (Linux errno numbers on the wire, whatever the host).
//
// # Framers
//
// A Framer measures the frame at the start of a byte stream
// (RequestStreamFramer, ReplyStreamFramer, HandshakeFramer, and the
// stateful NewStreamFramer for a whole connection direction), for tools
// that must act on whole frames, such as fault injection.
package wire
