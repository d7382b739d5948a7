package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
)

// Seeds: valid frames of every kind, and a few broken ones.

func seedRequests(f *testing.F) {
	for _, r := range []Request{
		{Op: OpRead, ID: 1, Length: 4096, Floor: 1},
		{Op: OpWrite, Flags: FlagFUA, ID: 2, Offset: 1 << 40, Length: DefaultMaxTransfer},
		{Op: OpFlush, ID: 3},
		{Op: OpDiscard, ID: 4, Offset: 512, Length: 0xffffffff},
		{Op: OpWriteZeroes, Flags: FlagNoUnmap, ID: 5, Length: 512},
		{Op: OpPing, ID: 1<<63 | 7},
		{Op: OpDisconnect, ID: 8, Floor: 8},
	} {
		f.Add(reqFrame(r, nil), uint32(DefaultMaxTransfer))
	}
	f.Add(reqBytes(OpRead, FlagFUA, 1, 0, 512, 0), uint32(0))
	f.Add(reqBytes(OpGoodbye, 0, 0, 0, 0, 0), uint32(0))
	f.Add([]byte("DSTQ"), uint32(0))
}

func FuzzParseRequest(f *testing.F) {
	seedRequests(f)
	f.Fuzz(func(t *testing.T, b []byte, maxTransfer uint32) {
		r, err := ParseRequest(b, maxTransfer)
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFraming) || r != (Request{}) {
				t.Fatalf("error %v (%T) with %+v", err, err, r)
			}
			return
		}
		var out [RequestHeaderSize]byte
		r.Put(out[:])
		if !bytes.Equal(out[:], b[:RequestHeaderSize]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, b[:RequestHeaderSize])
		}
		if err := r.Validate(maxTransfer); err != nil {
			t.Fatalf("accepted but Validate: %v", err)
		}
		if pl := r.PayloadLen(); pl < 0 || pl > MaxTransferLimit || (pl != 0) != (r.Op == OpWrite) {
			t.Fatalf("PayloadLen %d for %+v", pl, r)
		}
	})
}

func FuzzParseReply(f *testing.F) {
	for _, r := range []Reply{
		{Op: OpRead, ID: 1, Length: 4096},
		{Op: OpRead, ID: 1, Status: StatusEIO},
		{Op: OpWrite, ID: 2, Status: StatusEROFS},
		{Op: OpFlush, ID: 3},
		{Op: OpPing, ID: 1 << 63},
		{Op: OpDisconnect, ID: 9},
		{Op: OpGoodbye},
	} {
		f.Add(repFrame(r, nil))
	}
	f.Add(repBytes(OpWrite, 1, 0xfffffffb, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReply(b)
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFraming) || r != (Reply{}) {
				t.Fatalf("error %v (%T) with %+v", err, err, r)
			}
			return
		}
		var out [ReplyHeaderSize]byte
		r.Put(out[:])
		if !bytes.Equal(out[:], b[:ReplyHeaderSize]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, b[:ReplyHeaderSize])
		}
		if pl := r.PayloadLen(); pl > MaxTransferLimit || pl != 0 && (r.Op != OpRead || r.Status != 0) {
			t.Fatalf("PayloadLen %d for %+v", pl, r)
		}
	})
}

// trackingReader counts the bytes read and checks that reads are bounded.
type trackingReader struct {
	r *bytes.Reader
	n int
}

func (tr *trackingReader) Read(p []byte) (int, error) {
	n, err := tr.r.Read(p)
	tr.n += n
	return n, err
}

// checkReadErr: a failed read is a *HandshakeError, or an I/O error from
// a stream that ended early.
func checkReadErr(t *testing.T, data []byte, err error) {
	t.Helper()
	var he *HandshakeError
	switch {
	case errors.As(err, &he):
		if he.Code != RefuseMalformed && he.Code != RefuseUnsupported && he.Code != RefuseVersion {
			t.Fatalf("code %v: %v", he.Code, err)
		}
		if he.Reason == "" {
			t.Fatal("empty reason")
		}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		if len(data) >= HandshakeHeaderSize {
			n := binary.LittleEndian.Uint32(data[8:12])
			if int(n) <= len(data)-HandshakeHeaderSize {
				t.Fatalf("EOF although the message is complete: %v", err)
			}
		}
	default:
		t.Fatalf("unexpected error %v (%T)", err, err)
	}
}

// consumed checks that exactly one message was read.
func consumed(t *testing.T, data []byte, n int) {
	t.Helper()
	want := HandshakeHeaderSize + int(binary.LittleEndian.Uint32(data[8:12]))
	if n != want || n > HandshakeHeaderSize+MaxHandshakeBody {
		t.Fatalf("read %d bytes, message is %d", n, want)
	}
}

func FuzzReadHello(f *testing.F) {
	f.Add(helloBytes(f))
	var buf bytes.Buffer
	_ = WriteHello(&buf, &Hello{Version: 3, Export: "a.b-c_D", Features: 1<<63 | FeatResume, Session: tok, HasSession: true,
		WantReadOnly: true, ClientName: "hôte", MaxInflight: 65536, TagSize: 16})
	f.Add(buf.Bytes())
	f.Add(rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(0x8777, nil)))
	f.Add(rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(0x0777, []byte("skip me"))))
	f.Add(rawMsg(MsgHello, 1, aName, aFeatures, aFeatures))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := &trackingReader{r: bytes.NewReader(data)}
		h, err := ReadHello(tr)
		if err != nil {
			checkReadErr(t, data, err)
			return
		}
		consumed(t, data, tr.n)
		if h.Version == 0 || h.Validate() != nil {
			t.Fatalf("accepted invalid %+v", h)
		}
		var out bytes.Buffer
		if err := WriteHello(&out, h); err != nil {
			t.Fatalf("WriteHello(%+v): %v", h, err)
		}
		h2, err := ReadHello(&out)
		if err != nil || !reflect.DeepEqual(*h2, *h) {
			t.Fatalf("round trip: %+v, %v; want %+v", h2, err, h)
		}
	})
}

func FuzzReadWelcome(f *testing.F) {
	f.Add(welcomeBytes(f))
	f.Add(refuseBytes(f))
	f.Add(welcomeMsg(1, nil))
	f.Add(welcomeMsg(1, map[uint16][]byte{AttrWelcomeResumed: u8(1), AttrWelcomePhysicalBlock: u32(1 << 20),
		AttrWelcomeReadOnly: u8(1), AttrWelcomeDiscardGranularity: u32(1 << 16), AttrWelcomeTagSize: u8(0),
		AttrWelcomeExporterName: []byte("exporter-1")}, rawAttr(0x01ff, nil)))
	f.Add(rawMsg(MsgRefuse, 9, rawAttr(AttrRefuseCode, u16(2)), rawAttr(AttrRefuseReason, []byte("version 9 only"))))
	f.Add(rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(0))))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := &trackingReader{r: bytes.NewReader(data)}
		w, err := ReadWelcome(tr)
		var re *RefuseError
		switch {
		case errors.As(err, &re):
			consumed(t, data, tr.n)
			if w != nil || re.Code == 0 {
				t.Fatalf("refusal %+v with %v", re, w)
			}
			var out bytes.Buffer
			ref := &Refuse{Version: re.Version, Code: re.Code, Reason: re.Reason}
			if err := WriteRefuse(&out, ref); err != nil {
				t.Fatal(err)
			}
			_, err2 := ReadWelcome(&out)
			var re2 *RefuseError
			want := *re
			if want.Version == 0 {
				want.Version = Version
			}
			if !errors.As(err2, &re2) || !reflect.DeepEqual(*re2, want) {
				t.Fatalf("refuse round trip: %v; want %+v", err2, want)
			}
		case err != nil:
			checkReadErr(t, data, err)
		default:
			consumed(t, data, tr.n)
			if w.Validate() != nil || w.PhysicalBlock == 0 {
				t.Fatalf("accepted invalid %+v", w)
			}
			var out bytes.Buffer
			if err := WriteWelcome(&out, w); err != nil {
				t.Fatalf("WriteWelcome(%+v): %v", w, err)
			}
			w2, err := ReadWelcome(&out)
			if err != nil || !reflect.DeepEqual(*w2, *w) {
				t.Fatalf("round trip: %+v, %v; want %+v", w2, err, w)
			}
		}
	})
}

func FuzzAttrs(f *testing.F) {
	f.Add([]byte{})
	f.Add(helloBytes(f)[HandshakeHeaderSize:])
	f.Add(welcomeBytes(f)[HandshakeHeaderSize:])
	f.Add(refuseBytes(f)[HandshakeHeaderSize:])
	f.Add(append(rawAttr(1, nil), rawAttr(1, nil)...))
	f.Add([]byte{1, 0, 5, 0, 1})
	f.Fuzz(func(t *testing.T, body []byte) {
		attrs, err := ParseAttrs(body)
		if err != nil {
			var he *HandshakeError
			if !errors.As(err, &he) || he.Code != RefuseMalformed {
				t.Fatalf("error %v (%T)", err, err)
			}
			return
		}
		if len(attrs) > len(body)/4 {
			t.Fatalf("%d attributes from %d bytes", len(attrs), len(body))
		}
		out, err := AppendAttrs(nil, attrs)
		if err != nil {
			t.Fatalf("AppendAttrs: %v", err)
		}
		if !bytes.Equal(out, body) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, body)
		}
	})
}

func FuzzStreamFramer(f *testing.F) {
	cs, _ := clientStream(f)
	ss, _ := serverStream(f)
	f.Add(cs, true, uint8(1))
	f.Add(ss, false, uint8(7))
	f.Add(refuseBytes(f), false, uint8(3))
	f.Add(append(refuseBytes(f), repFrame(Reply{Op: OpGoodbye}, nil)...), false, uint8(0))
	f.Add(append(helloBytes(f), welcomeBytes(f)...), true, uint8(12))
	f.Fuzz(func(t *testing.T, data []byte, c2s bool, step uint8) {
		// Whole stream at once, one call per frame.
		type frame struct{ start, n int }
		var whole []frame
		var wholeErr error
		fr := NewStreamFramer(c2s)
		for pos := 0; pos < len(data); {
			n, need, err := fr(data[pos:])
			checkContract(t, data[pos:], n, need, err)
			if err != nil {
				wholeErr = err
				break
			}
			if n == 0 {
				break
			}
			// The header that was measured parses.
			if pos+n <= len(data) {
				checkFrame(t, data[pos:pos+n], c2s)
			}
			whole = append(whole, frame{pos, n})
			pos += n
		}

		// The same stream fed in pieces of step bytes, re-querying: same
		// frames, same error.
		if step == 0 {
			step = 1
		}
		fr = NewStreamFramer(c2s)
		var pieces []frame
		var piecesErr error
		start := 0
	feed:
		for end := 0; ; end = min(end+int(step), len(data)) {
			for {
				n, need, err := fr(data[start:end])
				checkContract(t, data[start:end], n, need, err)
				if err != nil {
					piecesErr = err
					break feed
				}
				if n == 0 || start+n > end {
					break
				}
				pieces = append(pieces, frame{start, n})
				start += n
			}
			if end == len(data) {
				// The last, incomplete frame, if any, as the whole run saw it.
				if start < len(data) {
					if n, _, _ := fr(data[start:]); n > 0 {
						pieces = append(pieces, frame{start, n})
					}
				}
				break
			}
		}
		if (wholeErr == nil) != (piecesErr == nil) || wholeErr != nil && wholeErr.Error() != piecesErr.Error() {
			t.Fatalf("errors differ: whole %v, pieces %v", wholeErr, piecesErr)
		}
		if len(whole) != len(pieces) {
			t.Fatalf("frames differ: whole %v, pieces %v", whole, pieces)
		}
		for i := range whole {
			if whole[i] != pieces[i] {
				t.Fatalf("frame %d differs: whole %v, pieces %v", i, whole[i], pieces[i])
			}
		}
	})
}

// checkFrame re-parses a complete frame the framer measured.
func checkFrame(t *testing.T, b []byte, c2s bool) {
	t.Helper()
	switch string(b[:4]) {
	case "DSTH":
		if _, err := checkAttrs(b[HandshakeHeaderSize:]); err != nil {
			return // the framer does not look at bodies
		}
	case "DSTQ":
		r, err := ParseRequest(b, 0)
		if err != nil || !c2s || len(b) != RequestHeaderSize+r.PayloadLen() {
			t.Fatalf("framed request %x: %v", b[:RequestHeaderSize], err)
		}
	case "DSTR":
		r, err := ParseReply(b)
		if err != nil || c2s || len(b) != ReplyHeaderSize+r.PayloadLen() {
			t.Fatalf("framed reply %x: %v", b[:ReplyHeaderSize], err)
		}
	default:
		t.Fatalf("framed %q", b[:4])
	}
}
