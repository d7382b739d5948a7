package wire

import "encoding/binary"

// A Framer splits a byte stream of the protocol into frames, for tools that
// act on whole frames (the fault-injection wrapper of transport/fault).
//
// b holds the bytes that start at a frame boundary (possibly only a few of
// them, possibly more than one frame). The result is one of:
//
//   - need > 0 (frameLen 0, err nil): at least need bytes, counted from
//     the start of b, are required before the frame can be measured; need
//     is always > len(b). Call again with more bytes.
//   - frameLen > 0 (err nil): the frame that starts at b[0] takes exactly
//     frameLen bytes: header + payload + trailer (the trailer is 0 bytes in
//     version 1). frameLen may be larger than len(b); the next frame starts
//     at b[frameLen]. need is then the length of the frame's header (12, 24
//     or 40: the bytes that were needed to measure it), 1 ≤ need ≤
//     frameLen.
//   - err != nil (frameLen 0, need 0): the stream is not a valid DST
//     stream at this point (wrong magic, a header that breaks the framing
//     rules, a frame that cannot be there). err is a *FrameError
//     (errors.Is(err, ErrFraming)). Nothing after it can be framed; a
//     wrapper should pass the rest through untouched or close.
//
// The frame length is only reported for a header that passes ParseRequest
// (with MaxTransferLimit), ParseReply, or the handshake header checks
// (magic, reserved byte, known type, body length ≤ MaxHandshakeBody), so it
// is at most HandshakeHeaderSize+MaxHandshakeBody,
// RequestHeaderSize+MaxTransferLimit or ReplyHeaderSize+MaxTransferLimit.
//
// This is the contract of transport/fault.Framer (frameLen, headerLen,
// err): a Framer converts to one. A fault wrapper that frames a
// deliberately malformed stream fails with its framing error.
type Framer func(b []byte) (frameLen, need int, err error)

var (
	_ Framer = RequestStreamFramer
	_ Framer = ReplyStreamFramer
	_ Framer = HandshakeFramer
)

// RequestStreamFramer frames one request (client → exporter, after the
// handshake): 40 bytes of header, then Length bytes of payload for a WRITE.
// It is stateless.
func RequestStreamFramer(b []byte) (frameLen, need int, err error) {
	if len(b) < RequestHeaderSize {
		return 0, RequestHeaderSize, nil
	}
	r, err := ParseRequest(b, MaxTransferLimit)
	if err != nil {
		return 0, 0, err
	}
	return RequestHeaderSize + r.PayloadLen(), RequestHeaderSize, nil
}

// ReplyStreamFramer frames one reply (exporter → client, after the
// handshake): 24 bytes of header, then Length bytes of payload for a
// successful READ. It is stateless.
func ReplyStreamFramer(b []byte) (frameLen, need int, err error) {
	if len(b) < ReplyHeaderSize {
		return 0, ReplyHeaderSize, nil
	}
	r, err := ParseReply(b)
	if err != nil {
		return 0, 0, err
	}
	return ReplyHeaderSize + r.PayloadLen(), ReplyHeaderSize, nil
}

// HandshakeFramer frames one handshake message of any type: 12 bytes of
// header, then the body. It is stateless and does not look at the body.
func HandshakeFramer(b []byte) (frameLen, need int, err error) {
	if len(b) < HandshakeHeaderSize {
		return 0, HandshakeHeaderSize, nil
	}
	h, herr := parseHandshakeHeader(b)
	if herr != nil {
		return 0, 0, &FrameError{Frame: "handshake", Field: "header", Reason: herr.Reason}
	}
	return HandshakeHeaderSize + h.bodyLen, HandshakeHeaderSize, nil
}

// Stream phases of NewStreamFramer.
const (
	phaseStart        = iota // nothing framed yet: a handshake message must come
	phaseHandshake           // the handshake message was framed
	phaseTransmission        // a request or reply was framed
	phaseRefused             // (exporter → client) the handshake message was a REFUSE
)

// NewStreamFramer returns a Framer for one direction of one connection,
// from its first byte: clientToServer selects the client → exporter
// direction (one HELLO, then requests) or the exporter → client one (one
// WELCOME then replies, or one REFUSE then nothing).
//
// The frame kind is decided by the magic ("DSTH" handshake, "DSTQ"
// request, "DSTR" reply), and the framer's state only checks the order:
//
//   - the first frame must be a handshake message of the right type
//     (HELLO client → exporter; WELCOME or REFUSE exporter → client);
//     before it is measured, need is HandshakeHeaderSize;
//   - after it, a frame starting with "DSTH" is measured again as a
//     handshake message (so calling the framer twice on the same frame, for
//     example once with its header and once with all of it, is harmless;
//     the framer cannot tell that from a second handshake message, which
//     the receiver rejects), and need is 4 until the magic is there; a
//     magic that is neither "DSTH" nor the direction's is an error at once;
//   - the first request (client → exporter) or reply (exporter → client)
//     moves the stream to transmission: from then on every frame must be
//     one (need is the header size), and a "DSTH" frame is an error;
//   - after a REFUSE, only the REFUSE itself may be framed again; anything
//     else is an error (the exporter closes after a REFUSE).
//
// A call that does not return a frame length does not change the state; the
// result of a call depends only on the state and b. The Framer is not safe
// for concurrent use.
func NewStreamFramer(clientToServer bool) Framer {
	phase := phaseStart
	frame, magic, want := "reply", ReplyMagic, `"DSTR"`
	framer := ReplyStreamFramer
	if clientToServer {
		frame, magic, want = "request", RequestMagic, `"DSTQ"`
		framer = RequestStreamFramer
	}
	return func(b []byte) (int, int, error) {
		switch {
		case phase == phaseStart && len(b) < HandshakeHeaderSize:
			return 0, HandshakeHeaderSize, nil
		case phase == phaseTransmission && len(b) < 4:
			return framer(b) // need the header
		case len(b) < 4:
			return 0, 4, nil // need the magic
		}
		switch m := binary.LittleEndian.Uint32(b[0:4]); {
		case m == HandshakeMagic:
			if phase == phaseTransmission {
				return 0, 0, &FrameError{Frame: "handshake", Field: "magic",
					Reason: "handshake message after transmission began"}
			}
			n, need, err := HandshakeFramer(b)
			if n == 0 {
				return 0, need, err
			}
			t := MsgType(b[6])
			if clientToServer && t != MsgHello || !clientToServer && t == MsgHello {
				dir := "exporter → client"
				if clientToServer {
					dir = "client → exporter"
				}
				return 0, 0, &FrameError{Frame: "handshake", Field: "type",
					Reason: t.String() + " sent " + dir}
			}
			if phase == phaseRefused && t != MsgRefuse {
				return 0, 0, &FrameError{Frame: "handshake", Field: "type",
					Reason: t.String() + " after REFUSE"}
			}
			if t == MsgRefuse {
				phase = phaseRefused
			} else {
				phase = phaseHandshake
			}
			return n, need, nil
		case phase == phaseStart:
			return 0, 0, &FrameError{Frame: "handshake", Field: "magic",
				Reason: "magic " + magicString(b) + ` where the stream must start with a handshake message ("DSTH")`}
		case phase == phaseRefused:
			return 0, 0, &FrameError{Frame: frame, Field: "magic", Reason: "data after REFUSE"}
		case m != magic:
			// Fail on the magic without waiting for a whole header.
			return 0, 0, &FrameError{Frame: frame, Field: "magic",
				Reason: "magic " + magicString(b) + ", want " + want}
		default:
			n, need, err := framer(b)
			if n > 0 {
				phase = phaseTransmission
			}
			return n, need, err
		}
	}
}
