package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func reqFrame(r Request, payload []byte) []byte {
	b := make([]byte, RequestHeaderSize, RequestHeaderSize+len(payload))
	r.Put(b)
	return append(b, payload...)
}

func repFrame(r Reply, payload []byte) []byte {
	b := make([]byte, ReplyHeaderSize, ReplyHeaderSize+len(payload))
	r.Put(b)
	return append(b, payload...)
}

func helloBytes(t testing.TB) []byte {
	var buf bytes.Buffer
	if err := WriteHello(&buf, &Hello{Export: "disk0", Features: KnownFeatures, ClientName: "host"}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func welcomeBytes(t testing.TB) []byte {
	var buf bytes.Buffer
	if err := WriteWelcome(&buf, goldenWelcome()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func refuseBytes(t testing.TB) []byte {
	var buf bytes.Buffer
	if err := WriteRefuse(&buf, &Refuse{Code: RefuseBusy, Reason: "later"}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// clientStream returns a client → exporter stream and its frames.
func clientStream(t testing.TB) ([]byte, [][]byte) {
	frames := [][]byte{
		helloBytes(t),
		reqFrame(Request{Op: OpRead, ID: 1, Offset: 0, Length: 4096, Floor: 1}, nil),
		reqFrame(Request{Op: OpWrite, Flags: FlagFUA, ID: 2, Offset: 4096, Length: 3}, []byte("abc")),
		reqFrame(Request{Op: OpPing, ID: 1 << 63}, nil),
		reqFrame(Request{Op: OpWriteZeroes, Flags: FlagNoUnmap, ID: 3, Length: 1 << 30}, nil),
		reqFrame(Request{Op: OpWrite, ID: 4, Length: 1}, []byte("DSTH")[:1]),
		reqFrame(Request{Op: OpDisconnect, ID: 5, Floor: 5}, nil),
	}
	return bytes.Join(frames, nil), frames
}

// serverStream returns an exporter → client stream and its frames.
func serverStream(t testing.TB) ([]byte, [][]byte) {
	frames := [][]byte{
		welcomeBytes(t),
		repFrame(Reply{Op: OpRead, ID: 1, Length: 5}, []byte("DSTR!")),
		repFrame(Reply{Op: OpWrite, ID: 2, Status: StatusEROFS}, nil),
		repFrame(Reply{Op: OpRead, ID: 3, Status: StatusEIO}, nil),
		repFrame(Reply{Op: OpPing, ID: 1 << 63}, nil),
		repFrame(Reply{Op: OpGoodbye}, nil),
	}
	return bytes.Join(frames, nil), frames
}

// splitAll frames a complete stream the way a wrapper that reads the header,
// then the whole frame, would: one call per frame, with only the bytes
// asked for.
func splitAll(t *testing.T, f Framer, stream []byte) [][]byte {
	t.Helper()
	var frames [][]byte
	pos := 0
	avail := 0 // bytes of the stream the wrapper has read
	for pos < len(stream) {
		n, need, err := f(stream[pos : pos+avail])
		if err != nil {
			t.Fatalf("at %d: %v", pos, err)
		}
		checkContract(t, stream[pos:pos+avail], n, need, err)
		if n == 0 {
			if need <= avail {
				t.Fatalf("at %d: need %d with %d bytes", pos, need, avail)
			}
			avail = need
			if pos+avail > len(stream) {
				t.Fatalf("at %d: need %d beyond the stream", pos, need)
			}
			continue
		}
		frames = append(frames, stream[pos:pos+n])
		pos += n
		avail = 0
	}
	return frames
}

// splitRequery frames a stream the way a wrapper that calls the framer
// again on every byte it receives would.
func splitRequery(t *testing.T, f Framer, stream []byte) [][]byte {
	t.Helper()
	var frames [][]byte
	start := 0
	for end := 0; end <= len(stream); end++ {
		for {
			n, need, err := f(stream[start:end])
			if err != nil {
				t.Fatalf("at %d..%d: %v", start, end, err)
			}
			checkContract(t, stream[start:end], n, need, err)
			if n == 0 {
				if need <= end-start {
					t.Fatalf("need %d with %d bytes", need, end-start)
				}
				break
			}
			if start+n > end {
				break // wait for the rest of the frame
			}
			frames = append(frames, stream[start:start+n])
			start += n
		}
	}
	if start != len(stream) {
		t.Fatalf("stopped at %d of %d", start, len(stream))
	}
	return frames
}

// checkContract checks one Framer result against the Framer contract, which
// is also transport/fault.Framer's.
func checkContract(t testing.TB, b []byte, n, need int, err error) {
	t.Helper()
	switch {
	case err != nil:
		if n != 0 || need != 0 || !errors.Is(err, ErrFraming) {
			t.Fatalf("error %v with %d, %d", err, n, need)
		}
	case n == 0:
		if need <= len(b) {
			t.Fatalf("need %d with %d bytes", need, len(b))
		}
	default:
		if need < 1 || need > n || need > len(b) || n > RequestHeaderSize+MaxTransferLimit {
			t.Fatalf("frame length %d, header length %d, with %d bytes", n, need, len(b))
		}
	}
}

func sameFrames(t *testing.T, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d frames, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: %x, want %x", i, got[i], want[i])
		}
	}
}

func TestStreamFramer(t *testing.T) {
	cs, cf := clientStream(t)
	ss, sf := serverStream(t)
	sameFrames(t, splitAll(t, NewStreamFramer(true), cs), cf)
	sameFrames(t, splitAll(t, NewStreamFramer(false), ss), sf)
	sameFrames(t, splitRequery(t, NewStreamFramer(true), cs), cf)
	sameFrames(t, splitRequery(t, NewStreamFramer(false), ss), sf)

	// A refused connection.
	rb := refuseBytes(t)
	sameFrames(t, splitAll(t, NewStreamFramer(false), rb), [][]byte{rb})
	sameFrames(t, splitRequery(t, NewStreamFramer(false), rb), [][]byte{rb})
}

func TestStreamFramerNeed(t *testing.T) {
	f := NewStreamFramer(true)
	for _, n := range []int{0, 1, 4, 11} {
		if fl, need, err := f(make([]byte, n)); fl != 0 || need != HandshakeHeaderSize || err != nil {
			t.Errorf("%d bytes: %d, %d, %v", n, fl, need, err)
		}
	}
	h := helloBytes(t)
	if fl, need, err := f(h[:12]); fl != len(h) || need != HandshakeHeaderSize || err != nil {
		t.Fatalf("hello header: %d, %d, %v", fl, need, err)
	}
	if fl, need, err := f(nil); fl != 0 || need != 4 || err != nil {
		t.Fatalf("after hello: %d, %d, %v", fl, need, err)
	}
	if fl, need, err := f([]byte("DSTQ")); fl != 0 || need != RequestHeaderSize || err != nil {
		t.Fatalf("request magic: %d, %d, %v", fl, need, err)
	}
	if fl, need, err := f([]byte("DSTH")); fl != 0 || need != HandshakeHeaderSize || err != nil {
		t.Fatalf("handshake magic again: %d, %d, %v", fl, need, err)
	}
	w := reqFrame(Request{Op: OpWrite, ID: 1, Length: 1 << 20}, nil)
	if fl, need, err := f(w); fl != RequestHeaderSize+1<<20 || need != RequestHeaderSize || err != nil {
		t.Fatalf("write: %d, %d, %v", fl, need, err)
	}
	if fl, need, err := f(nil); fl != 0 || need != RequestHeaderSize || err != nil {
		t.Fatalf("in transmission: %d, %d, %v", fl, need, err)
	}
}

func TestStreamFramerErrors(t *testing.T) {
	hello, welcome, refuse := helloBytes(t), welcomeBytes(t), refuseBytes(t)
	read := reqFrame(Request{Op: OpRead, ID: 1, Length: 512}, nil)
	reply := repFrame(Reply{Op: OpRead, ID: 1}, nil)
	for _, tc := range []struct {
		name   string
		c2s    bool
		frames [][]byte // all but the last must frame
		err    string
	}{
		{"request first", true, [][]byte{read}, `magic "DSTQ" where the stream must start with a handshake message`},
		{"reply first", false, [][]byte{reply}, "must start with a handshake"},
		{"garbage first", true, [][]byte{[]byte("GET / HTTP/1.1\r\n")}, `magic "GET "`},
		{"welcome from client", true, [][]byte{welcome}, "WELCOME sent client → exporter"},
		{"hello from exporter", false, [][]byte{hello}, "HELLO sent exporter → client"},
		{"handshake after requests", true, [][]byte{hello, read, hello}, "handshake message after transmission began"},
		{"data after refuse", false, [][]byte{refuse, reply}, "data after REFUSE"},
		{"welcome after refuse", false, [][]byte{refuse, welcome}, "WELCOME after REFUSE"},
		{"reply on client side", true, [][]byte{hello, reply}, `magic "DSTR", want "DSTQ"`},
		{"request on exporter side", false, [][]byte{welcome, read}, `magic "DSTQ", want "DSTR"`},
		{"bad request", true, [][]byte{hello, reqFrame(Request{Op: OpRead, ID: 1}, nil)}, "length 0 for READ"},
		{"write above limit", true, [][]byte{hello, reqFrame(Request{Op: OpWrite, ID: 1, Length: MaxTransferLimit + 1}, nil)}, "exceeds max transfer"},
		{"bad reply", false, [][]byte{welcome, repFrame(Reply{Op: OpWrite, ID: 1, Length: 9}, nil)}, "length 9 on a WRITE reply"},
		{"handshake body too long", true, [][]byte{with(hello, func(b []byte) { b[10] = 2 })}, "body length 131"},
		{"handshake type 9", false, [][]byte{with(welcome, func(b []byte) { b[6] = 9 })}, "unknown handshake message type 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewStreamFramer(tc.c2s)
			for i, fr := range tc.frames {
				n, _, err := f(fr)
				if i < len(tc.frames)-1 {
					if err != nil || n != len(fr) {
						t.Fatalf("frame %d: %d, %v", i, n, err)
					}
					continue
				}
				if err == nil || !errors.Is(err, ErrFraming) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %d, %v; want an error containing %q", n, err, tc.err)
				}
				// Errors do not change the state: same answer again.
				_, _, err2 := f(fr)
				if err2 == nil || err2.Error() != err.Error() {
					t.Fatalf("second call: %v", err2)
				}
			}
		})
	}
}

func TestStatelessFramers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		f          Framer
		b          []byte
		len, need  int
		errMatches string
	}{
		{"request short", RequestStreamFramer, make([]byte, 39), 0, 40, ""},
		{"request read", RequestStreamFramer, reqFrame(Request{Op: OpRead, ID: 1, Length: 512}, nil), 40, 40, ""},
		{"request write", RequestStreamFramer, reqFrame(Request{Op: OpWrite, ID: 1, Length: 512}, nil)[:40], 552, 40, ""},
		{"request write max", RequestStreamFramer, reqFrame(Request{Op: OpWrite, ID: 1, Length: MaxTransferLimit}, nil), 40 + MaxTransferLimit, 40, ""},
		{"request bad", RequestStreamFramer, make([]byte, 40), 0, 0, "magic"},
		{"reply short", ReplyStreamFramer, nil, 0, 24, ""},
		{"reply read", ReplyStreamFramer, repFrame(Reply{Op: OpRead, ID: 1, Length: 4096}, nil), 24 + 4096, 24, ""},
		{"reply error", ReplyStreamFramer, repFrame(Reply{Op: OpRead, ID: 1, Status: StatusEIO}, nil), 24, 24, ""},
		{"reply bad", ReplyStreamFramer, make([]byte, 24), 0, 0, "magic"},
		{"handshake short", HandshakeFramer, []byte("DSTH"), 0, 12, ""},
		{"handshake", HandshakeFramer, helloBytes(t)[:12], len(helloBytes(t)), 12, ""},
		{"handshake bad", HandshakeFramer, make([]byte, 12), 0, 0, "wire: bad handshake: magic"},
	} {
		n, need, err := tc.f(tc.b)
		checkContract(t, tc.b, n, need, err)
		if n != tc.len || need != tc.need || (err == nil) != (tc.errMatches == "") ||
			err != nil && (!strings.Contains(err.Error(), tc.errMatches) || !errors.Is(err, ErrFraming)) {
			t.Errorf("%s: %d, %d, %v; want %d, %d, %q", tc.name, n, need, err, tc.len, tc.need, tc.errMatches)
		}
	}
}
