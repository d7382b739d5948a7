package crypto

// The FINISHED message (PROTOCOL.md §8.3) and the REFUSE that may come in
// its place.

import (
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dst-dev/dst/internal/wire"
)

// finished encodes a FINISHED carrying confirm.
func (h *Handshake) finished(confirm [confirmSize]byte) []byte {
	b := make([]byte, wire.HandshakeHeaderSize, wire.HandshakeHeaderSize+4+confirmSize)
	binary.LittleEndian.PutUint32(b[0:4], wire.HandshakeMagic)
	binary.LittleEndian.PutUint16(b[4:6], h.version)
	b[6] = byte(MsgFinished)
	binary.LittleEndian.PutUint32(b[8:12], 4+confirmSize)
	b = binary.LittleEndian.AppendUint16(b, AttrConfirm)
	b = binary.LittleEndian.AppendUint16(b, confirmSize)
	return append(b, confirm[:]...)
}

// readFinished reads the peer's FINISHED (or a REFUSE in its place) and
// compares it with want, the FINISHED the peer must have sent.
func (h *Handshake) readFinished(rw io.ReadWriter, want []byte, peer string) error {
	f, err := ReadFinished(rw)
	if err != nil {
		var re *wire.RefuseError
		if errors.As(err, &re) {
			if !h.client {
				if re.Code == wire.RefuseAccessDenied {
					return fmt.Errorf("crypto: %w: the client does not hold this exporter's key (it refused our FINISHED: %s)", ErrKeyMismatch, sanitize(re.Reason))
				}
				return fmt.Errorf("crypto: the client refused the handshake: %s (%v)", sanitize(re.Reason), re.Code)
			}
			return err
		}
		return err
	}
	if f.Version != h.version {
		return fmt.Errorf("crypto: %s's FINISHED has version %d, the handshake chose %d", peer, f.Version, h.version)
	}
	if !hmac.Equal(f.Confirm[:], want[len(want)-confirmSize:]) {
		var reason string
		if h.client {
			reason = "key confirmation failed: the exporter's FINISHED does not verify with this key"
			err = fmt.Errorf("crypto: %w: the exporter does not hold the same key (compare --key-file on both sides), or the connection is being tampered with", ErrKeyMismatch)
		} else {
			reason = "key confirmation failed: the client does not hold this exporter's key"
			err = fmt.Errorf("crypto: %w: the client does not hold this exporter's key (compare --key-file on both sides), or the connection is being tampered with", ErrKeyMismatch)
		}
		wire.WriteRefuse(rw, &wire.Refuse{Version: h.version, Code: wire.RefuseAccessDenied, Reason: reason})
		return err
	}
	return nil
}

// Finished is a decoded FINISHED.
type Finished struct {
	Version uint16
	Confirm [confirmSize]byte
}

// ReadFinished reads one FINISHED from r: the handshake header (magic,
// reserved byte, type FINISHED or REFUSE, body ≤ MaxFinishedBody) and the
// body, whose attributes follow PROTOCOL.md §2 (structure, unknown critical
// attributes) with CONFIRM required and 32 bytes. A REFUSE in its place is
// returned as a *wire.RefuseError; rule violations as *wire.HandshakeError;
// errors of r wrapped.
func ReadFinished(r io.Reader) (*Finished, error) {
	var hb [wire.HandshakeHeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return nil, fmt.Errorf("crypto: reading FINISHED: %w", err)
	}
	if binary.LittleEndian.Uint32(hb[0:4]) != wire.HandshakeMagic {
		return nil, malformedf("magic %q where a FINISHED belongs, want \"DSTH\"", hb[0:4])
	}
	typ := wire.MsgType(hb[6])
	if hb[7] != 0 {
		return nil, malformedf("%v: reserved byte %#x", typ, hb[7])
	}
	if typ != MsgFinished && typ != wire.MsgRefuse {
		return nil, malformedf("got %v where a FINISHED belongs", typ)
	}
	n := binary.LittleEndian.Uint32(hb[8:12])
	if n > MaxFinishedBody {
		return nil, malformedf("%v body length %d exceeds %d", typ, n, MaxFinishedBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("crypto: reading FINISHED body: %w", err)
	}
	attrs, err := wire.ParseAttrs(body)
	if err != nil {
		return nil, err
	}
	for _, a := range attrs {
		if a.Critical() {
			return nil, unsupportedf("unknown critical attribute %#04x in %v", a.Type, typ)
		}
	}
	version := binary.LittleEndian.Uint16(hb[4:6])
	if typ == wire.MsgRefuse {
		return nil, parseRefuse(version, attrs)
	}
	f := &Finished{Version: version}
	found := false
	for _, a := range attrs {
		if a.Type == AttrConfirm {
			if len(a.Value) != confirmSize {
				return nil, malformedf("CONFIRM is %d bytes, want %d", len(a.Value), confirmSize)
			}
			copy(f.Confirm[:], a.Value)
			found = true
		}
	}
	if !found {
		return nil, malformedf("FINISHED without CONFIRM")
	}
	return f, nil
}

func parseRefuse(version uint16, attrs []wire.Attr) error {
	e := &wire.RefuseError{Version: version}
	haveCode := false
	for _, a := range attrs {
		switch a.Type {
		case wire.AttrRefuseCode:
			if len(a.Value) != 2 {
				return malformedf("REFUSE CODE is %d bytes, want 2", len(a.Value))
			}
			e.Code = wire.RefuseCode(binary.LittleEndian.Uint16(a.Value))
			haveCode = e.Code != 0
		case wire.AttrRefuseReason:
			e.Reason = string(a.Value)
		}
	}
	if !haveCode {
		return malformedf("REFUSE without a non-zero CODE")
	}
	return e
}

// sanitize makes a peer's reason printable: it cannot send terminal
// escapes to a log.
func sanitize(s string) string {
	if len(s) > wire.MaxNameLen {
		s = s[:wire.MaxNameLen]
	}
	return strings.Map(func(r rune) rune {
		if r == ' ' || unicode.IsPrint(r) {
			return r
		}
		return utf8.RuneError
	}, strings.ToValidUTF8(s, "\uFFFD"))
}
