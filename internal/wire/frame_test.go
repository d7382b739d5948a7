package wire

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// unhex decodes hex written by hand, ignoring spaces, newlines and
// comments from "#" to the end of a line.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var sb strings.Builder
	for line := range strings.Lines(s) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		sb.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(sb.String())
	if err != nil {
		t.Fatalf("bad hex literal: %v", err)
	}
	return b
}

// Golden bytes written by hand from PROTOCOL.md §3 and §4.
func TestGoldenRequest(t *testing.T) {
	r := Request{Op: OpWrite, Flags: FlagFUA, ID: 0x0102030405060708, Offset: 0x1000, Length: 0x200, Floor: 5}
	want := unhex(t, `
		44 53 54 51              # magic "DSTQ"
		02                       # op WRITE
		00                       # reserved
		01 00                    # flags FUA
		08 07 06 05 04 03 02 01  # id
		00 10 00 00 00 00 00 00  # offset 4096
		00 02 00 00              # length 512
		00 00 00 00              # reserved
		05 00 00 00 00 00 00 00  # floor 5
	`)
	if len(want) != RequestHeaderSize {
		t.Fatalf("golden literal is %d bytes", len(want))
	}
	var b [RequestHeaderSize]byte
	r.Put(b[:])
	if string(b[:]) != string(want) {
		t.Fatalf("Put:\n got %x\nwant %x", b, want)
	}
	if string(b[:4]) != "DSTQ" {
		t.Fatalf("magic reads %q", b[:4])
	}
	got, err := ParseRequest(want, DefaultMaxTransfer)
	if err != nil || got != r {
		t.Fatalf("ParseRequest = %+v, %v; want %+v", got, err, r)
	}
	if got.PayloadLen() != 512 {
		t.Fatalf("PayloadLen = %d", got.PayloadLen())
	}
	// A READ of the same range: no payload.
	if (Request{Op: OpRead, Length: 512}).PayloadLen() != 0 {
		t.Fatal("READ has a payload")
	}
}

func TestGoldenReply(t *testing.T) {
	for _, tc := range []struct {
		r   Reply
		hex string
	}{
		{Reply{Op: OpRead, ID: 7, Length: 4096},
			"44535452" + "01" + "00" + "0000" + "0700000000000000" + "00000000" + "00100000"},
		{Reply{Op: OpWrite, ID: 9, Status: StatusEROFS},
			"44535452" + "02" + "00" + "0000" + "0900000000000000" + "1e000000" + "00000000"},
		{Reply{Op: OpGoodbye},
			"44535452" + "12" + "00" + "0000" + "0000000000000000" + "00000000" + "00000000"},
	} {
		want := unhex(t, tc.hex)
		if len(want) != ReplyHeaderSize {
			t.Fatalf("golden literal is %d bytes", len(want))
		}
		var b [ReplyHeaderSize]byte
		tc.r.Put(b[:])
		if string(b[:]) != string(want) {
			t.Errorf("Put(%+v):\n got %x\nwant %x", tc.r, b, want)
		}
		if string(b[:4]) != "DSTR" {
			t.Errorf("magic reads %q", b[:4])
		}
		got, err := ParseReply(want)
		if err != nil || got != tc.r {
			t.Errorf("ParseReply = %+v, %v; want %+v", got, err, tc.r)
		}
	}
}

// reqBytes encodes a request header without going through Put.
func reqBytes(op Op, flags Flags, id, off uint64, length uint32, floor uint64) []byte {
	b := make([]byte, RequestHeaderSize)
	copy(b, "DSTQ")
	b[4] = byte(op)
	binary.LittleEndian.PutUint16(b[6:], uint16(flags))
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], off)
	binary.LittleEndian.PutUint32(b[24:], length)
	binary.LittleEndian.PutUint64(b[32:], floor)
	return b
}

func with(b []byte, f func([]byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	return c
}

func TestParseRequestTable(t *testing.T) {
	const mt = DefaultMaxTransfer
	tests := []struct {
		name string
		b    []byte
		max  uint32
		err  string // "" for valid; else a fragment of the message
		fld  string // expected FrameError.Field
	}{
		// valid
		{"read 1", reqBytes(OpRead, 0, 1, 0, 1, 0), mt, "", ""},
		{"read max", reqBytes(OpRead, 0, 1, 1<<40, mt, 1), mt, "", ""},
		{"write", reqBytes(OpWrite, 0, 2, 4096, 4096, 0), mt, "", ""},
		{"write fua", reqBytes(OpWrite, FlagFUA, 2, 4096, mt, 0), mt, "", ""},
		{"flush", reqBytes(OpFlush, 0, 3, 0, 0, 3), mt, "", ""},
		{"discard 1", reqBytes(OpDiscard, 0, 4, 512, 1, 0), mt, "", ""},
		{"discard u32 max", reqBytes(OpDiscard, 0, 4, 0, 0xffffffff, 0), mt, "", ""},
		{"write zeroes", reqBytes(OpWriteZeroes, 0, 5, 0, 1<<31, 0), mt, "", ""},
		{"write zeroes no unmap", reqBytes(OpWriteZeroes, FlagNoUnmap, 5, 0, 512, 0), mt, "", ""},
		{"ping", reqBytes(OpPing, 0, 1<<63|1, 0, 0, 9), mt, "", ""},
		{"disconnect", reqBytes(OpDisconnect, 0, 10, 0, 0, 10), mt, "", ""},
		{"max 0 means limit", reqBytes(OpRead, 0, 1, 0, MaxTransferLimit, 0), 0, "", ""},
		{"max above limit is clamped", reqBytes(OpRead, 0, 1, 0, MaxTransferLimit+1, 0), 1 << 30,
			"length 33554433 exceeds max transfer 33554432", "length"},
		{"trailing bytes ignored", append(reqBytes(OpRead, 0, 1, 0, 512, 0), 0xff, 0xff), mt, "", ""},

		// magic
		{"magic reply", with(reqBytes(OpRead, 0, 1, 0, 512, 0), func(b []byte) { copy(b, "DSTR") }), mt, `magic "DSTR", want "DSTQ"`, "magic"},
		{"magic zero", with(reqBytes(OpRead, 0, 1, 0, 512, 0), func(b []byte) { b[0] = 0 }), mt, "magic", "magic"},
		{"magic big endian", with(reqBytes(OpRead, 0, 1, 0, 512, 0), func(b []byte) { copy(b, "QTSD") }), mt, "magic", "magic"},
		{"short", reqBytes(OpRead, 0, 1, 0, 512, 0)[:39], mt, "header is 39 bytes, need 40", "header"},
		// op
		{"op 0", reqBytes(0, 0, 1, 0, 0, 0), mt, "unknown op 0", "op"},
		{"op 6", reqBytes(6, 0, 1, 0, 0, 0), mt, "unknown op 6", "op"},
		{"op 15", reqBytes(15, 0, 1, 0, 0, 0), mt, "unknown op 15", "op"},
		{"op 19", reqBytes(19, 0, 1, 0, 0, 0), mt, "unknown op 19", "op"},
		{"op 255", reqBytes(255, 0, 1, 0, 0, 0), mt, "unknown op 255", "op"},
		{"op goodbye", reqBytes(OpGoodbye, 0, 0, 0, 0, 0), mt, "GOODBYE (18) is reply-only", "op"},
		// reserved
		{"reserved 5", with(reqBytes(OpRead, 0, 1, 0, 512, 0), func(b []byte) { b[5] = 1 }), mt, "reserved bytes not zero", "reserved"},
		{"reserved 28", with(reqBytes(OpRead, 0, 1, 0, 512, 0), func(b []byte) { b[28] = 1 }), mt, "reserved bytes not zero", "reserved"},
		{"reserved 31", with(reqBytes(OpFlush, 0, 1, 0, 0, 0), func(b []byte) { b[31] = 0x80 }), mt, "reserved bytes not zero", "reserved"},
		// flags
		{"flag bit 2", reqBytes(OpWrite, 4, 1, 0, 512, 0), mt, "unknown flag bits 0x4", "flags"},
		{"flag bit 15", reqBytes(OpRead, 0x8000, 1, 0, 512, 0), mt, "unknown flag bits 0x8000", "flags"},
		{"fua read", reqBytes(OpRead, FlagFUA, 1, 0, 512, 0), mt, "flag FUA on READ (WRITE only)", "flags"},
		{"fua flush", reqBytes(OpFlush, FlagFUA, 1, 0, 0, 0), mt, "flag FUA on FLUSH", "flags"},
		{"fua discard", reqBytes(OpDiscard, FlagFUA, 1, 0, 512, 0), mt, "flag FUA on DISCARD", "flags"},
		{"fua write zeroes", reqBytes(OpWriteZeroes, FlagFUA, 1, 0, 512, 0), mt, "flag FUA on WRITE_ZEROES", "flags"},
		{"fua ping", reqBytes(OpPing, FlagFUA, 1, 0, 0, 0), mt, "flag FUA on PING", "flags"},
		{"fua disconnect", reqBytes(OpDisconnect, FlagFUA, 1, 0, 0, 0), mt, "flag FUA on DISCONNECT", "flags"},
		{"no unmap write", reqBytes(OpWrite, FlagNoUnmap, 1, 0, 512, 0), mt, "flag NO_UNMAP on WRITE (WRITE_ZEROES only)", "flags"},
		{"no unmap read", reqBytes(OpRead, FlagNoUnmap, 1, 0, 512, 0), mt, "flag NO_UNMAP on READ", "flags"},
		{"no unmap discard", reqBytes(OpDiscard, FlagNoUnmap, 1, 0, 512, 0), mt, "flag NO_UNMAP on DISCARD", "flags"},
		{"no unmap flush", reqBytes(OpFlush, FlagNoUnmap, 1, 0, 0, 0), mt, "flag NO_UNMAP on FLUSH", "flags"},
		{"both on write", reqBytes(OpWrite, FlagFUA|FlagNoUnmap, 1, 0, 512, 0), mt, "flag NO_UNMAP on WRITE", "flags"},
		// lengths
		{"read 0", reqBytes(OpRead, 0, 1, 0, 0, 0), mt, "length 0 for READ", "length"},
		{"write 0", reqBytes(OpWrite, 0, 1, 0, 0, 0), mt, "length 0 for WRITE", "length"},
		{"read too long", reqBytes(OpRead, 0, 1, 0, 2<<20, 0), mt, "length 2097152 exceeds max transfer 1048576", "length"},
		{"write too long", reqBytes(OpWrite, 0, 1, 0, mt+1, 0), mt, "length 1048577 exceeds max transfer 1048576", "length"},
		{"write above limit", reqBytes(OpWrite, 0, 1, 0, 0xffffffff, 0), 0, "exceeds max transfer 33554432", "length"},
		{"discard 0", reqBytes(OpDiscard, 0, 1, 0, 0, 0), mt, "length 0 for DISCARD", "length"},
		{"write zeroes 0", reqBytes(OpWriteZeroes, 0, 1, 0, 0, 0), mt, "length 0 for WRITE_ZEROES", "length"},
		{"flush offset", reqBytes(OpFlush, 0, 1, 512, 0, 0), mt, "offset 512 for FLUSH (must be 0)", "offset"},
		{"flush length", reqBytes(OpFlush, 0, 1, 0, 512, 0), mt, "length 512 for FLUSH (must be 0)", "length"},
		{"ping offset", reqBytes(OpPing, 0, 1, 1, 0, 0), mt, "offset 1 for PING", "offset"},
		{"ping length", reqBytes(OpPing, 0, 1, 0, 1, 0), mt, "length 1 for PING", "length"},
		{"disconnect offset", reqBytes(OpDisconnect, 0, 1, 1<<63, 0, 0), mt, "offset 9223372036854775808 for DISCONNECT", "offset"},
		{"disconnect length", reqBytes(OpDisconnect, 0, 1, 0, 7, 0), mt, "length 7 for DISCONNECT", "length"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRequest(tc.b, tc.max)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				var out [RequestHeaderSize]byte
				r.Put(out[:])
				if string(out[:]) != string(tc.b[:RequestHeaderSize]) {
					t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, tc.b[:RequestHeaderSize])
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v, want error containing %q", r, tc.err)
			}
			if r != (Request{}) {
				t.Errorf("error with non-zero request %+v", r)
			}
			if !errors.Is(err, ErrFraming) {
				t.Errorf("error %v does not match ErrFraming", err)
			}
			var fe *FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FrameError", err)
			}
			if fe.Field != tc.fld {
				t.Errorf("Field = %q, want %q", fe.Field, tc.fld)
			}
			if !strings.HasPrefix(err.Error(), "wire: bad request: ") || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %q, want it to contain %q", err, tc.err)
			}
		})
	}
}

// TestParseRequestEveryOpAndFlag checks every op byte with every flag
// combination against the rules, written again here independently.
func TestParseRequestEveryOpAndFlag(t *testing.T) {
	flagSets := []Flags{0, FlagFUA, FlagNoUnmap, FlagFUA | FlagNoUnmap, 1 << 2, 1 << 15, 0xffff}
	for op := 0; op < 256; op++ {
		for _, fl := range flagSets {
			for _, shape := range []struct{ off, length uint64 }{{0, 0}, {0, 512}, {512, 0}, {4096, 4096}} {
				b := reqBytes(Op(op), fl, 42, shape.off, uint32(shape.length), 0)
				_, err := ParseRequest(b, DefaultMaxTransfer)
				valid := true
				switch Op(op) {
				case OpRead, OpWrite, OpDiscard, OpWriteZeroes:
					valid = shape.length >= 1
				case OpFlush, OpPing, OpDisconnect:
					valid = shape.off == 0 && shape.length == 0
				default:
					valid = false
				}
				switch fl {
				case 0:
				case FlagFUA:
					valid = valid && Op(op) == OpWrite
				case FlagNoUnmap:
					valid = valid && Op(op) == OpWriteZeroes
				default:
					valid = false
				}
				if valid != (err == nil) {
					t.Errorf("op %d flags %#x off %d len %d: err %v, want valid=%v", op, uint16(fl), shape.off, shape.length, err, valid)
				}
			}
		}
	}
}

func repBytes(op Op, id uint64, status uint32, length uint32) []byte {
	b := make([]byte, ReplyHeaderSize)
	copy(b, "DSTR")
	b[4] = byte(op)
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint32(b[16:], status)
	binary.LittleEndian.PutUint32(b[20:], length)
	return b
}

func TestParseReplyTable(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		err  string
		fld  string
	}{
		{"read ok", repBytes(OpRead, 1, 0, 4096), "", ""},
		{"read ok max", repBytes(OpRead, 1, 0, MaxTransferLimit), "", ""},
		{"read ok 0 length", repBytes(OpRead, 1, 0, 0), "", ""}, // the client compares with the request
		{"read eio", repBytes(OpRead, 1, 5, 0), "", ""},
		{"write erofs", repBytes(OpWrite, 2, 30, 0), "", ""},
		{"write eperm", repBytes(OpWrite, 2, 1, 0), "", ""},
		{"flush eopnotsupp", repBytes(OpFlush, 3, 95, 0), "", ""},
		{"discard einval", repBytes(OpDiscard, 4, 22, 0), "", ""},
		{"write zeroes enospc", repBytes(OpWriteZeroes, 5, 28, 0), "", ""},
		{"write estale", repBytes(OpWrite, 6, 116, 0), "", ""},
		{"status 4095", repBytes(OpWrite, 6, 4095, 0), "", ""},
		{"ping", repBytes(OpPing, 1<<63|3, 0, 0), "", ""},
		{"disconnect", repBytes(OpDisconnect, 9, 0, 0), "", ""},
		{"goodbye", repBytes(OpGoodbye, 0, 0, 0), "", ""},

		{"short", repBytes(OpRead, 1, 0, 0)[:23], "header is 23 bytes, need 24", "header"},
		{"magic request", with(repBytes(OpRead, 1, 0, 0), func(b []byte) { copy(b, "DSTQ") }), `magic "DSTQ", want "DSTR"`, "magic"},
		{"magic handshake", with(repBytes(OpRead, 1, 0, 0), func(b []byte) { copy(b, "DSTH") }), `magic "DSTH"`, "magic"},
		{"op 0", repBytes(0, 1, 0, 0), "unknown op 0", "op"},
		{"op 6", repBytes(6, 1, 0, 0), "unknown op 6", "op"},
		{"op 19", repBytes(19, 1, 0, 0), "unknown op 19", "op"},
		{"reserved", with(repBytes(OpRead, 1, 0, 0), func(b []byte) { b[5] = 2 }), "reserved byte 5 = 0x2", "reserved"},
		{"flags", with(repBytes(OpWrite, 1, 0, 0), func(b []byte) { b[6] = 1 }), "flags 0x1, must be 0", "flags"},
		{"flags high", with(repBytes(OpWrite, 1, 0, 0), func(b []byte) { b[7] = 0x80 }), "flags 0x8000", "flags"},
		{"length on write", repBytes(OpWrite, 1, 0, 512), "length 512 on a WRITE reply", "length"},
		{"length on goodbye", repBytes(OpGoodbye, 0, 0, 1), "length 1 on a GOODBYE reply", "length"},
		{"length on failed read", repBytes(OpRead, 1, 5, 512), "length 512 on a failed READ (status EIO)", "length"},
		{"length above limit", repBytes(OpRead, 1, 0, MaxTransferLimit+1), "length 33554433 exceeds the transfer limit", "length"},
		{"negative errno", repBytes(OpWrite, 1, 0xfffffffb, 0), "status 4294967291 is not an errno", "status"},
		{"status 4096", repBytes(OpWrite, 1, 4096, 0), "status 4096 is not an errno", "status"},
		{"ping with status", repBytes(OpPing, 1, 5, 0), "status EIO on a PING reply", "status"},
		{"goodbye with id", repBytes(OpGoodbye, 3, 0, 0), "id 3 on GOODBYE (must be 0)", "id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseReply(tc.b)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				var out [ReplyHeaderSize]byte
				r.Put(out[:])
				if string(out[:]) != string(tc.b) {
					t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, tc.b)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v, want error containing %q", r, tc.err)
			}
			if !errors.Is(err, ErrFraming) {
				t.Errorf("error %v does not match ErrFraming", err)
			}
			var fe *FrameError
			if !errors.As(err, &fe) || fe.Field != tc.fld || fe.Frame != "reply" {
				t.Errorf("error %#v, want Field %q", err, tc.fld)
			}
			if !strings.HasPrefix(err.Error(), "wire: bad reply: ") || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %q, want it to contain %q", err, tc.err)
			}
		})
	}
}

func TestReplyPayloadLen(t *testing.T) {
	if n := (Reply{Op: OpRead, Length: 4096}).PayloadLen(); n != 4096 {
		t.Fatalf("PayloadLen = %d", n)
	}
	if n := (Reply{Op: OpWrite}).PayloadLen(); n != 0 {
		t.Fatalf("PayloadLen = %d", n)
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{OpRead.String(), "READ"},
		{OpWrite.String(), "WRITE"},
		{OpFlush.String(), "FLUSH"},
		{OpDiscard.String(), "DISCARD"},
		{OpWriteZeroes.String(), "WRITE_ZEROES"},
		{OpPing.String(), "PING"},
		{OpDisconnect.String(), "DISCONNECT"},
		{OpGoodbye.String(), "GOODBYE"},
		{Op(99).String(), "Op(99)"},
		{Flags(0).String(), "0"},
		{FlagFUA.String(), "FUA"},
		{(FlagFUA | FlagNoUnmap).String(), "FUA|NO_UNMAP"},
		{(FlagNoUnmap | 0x100).String(), "NO_UNMAP|0x100"},
		{Features(0).String(), "none"},
		{KnownFeatures.String(), "FLUSH|FUA|DISCARD|WRITE_ZEROES|RESUME"},
		{(FeatDiscard | FeatResume | 1<<40).String(), "DISCARD|RESUME|0x10000000000"},
		{Features(1 << 63).String(), "0x8000000000000000"},
		{RefuseMalformed.String(), "MALFORMED"},
		{RefuseVersion.String(), "VERSION"},
		{RefuseNoSuchExport.String(), "NO_SUCH_EXPORT"},
		{RefuseAccessDenied.String(), "ACCESS_DENIED"},
		{RefuseUnsupported.String(), "UNSUPPORTED"},
		{RefuseBusy.String(), "BUSY"},
		{RefuseCode(0).String(), "RefuseCode(0)"},
		{RefuseCode(7).String(), "RefuseCode(7)"},
		{MsgHello.String(), "HELLO"},
		{MsgWelcome.String(), "WELCOME"},
		{MsgRefuse.String(), "REFUSE"},
		{MsgType(4).String(), "MsgType(4)"},
		{Token{0xde, 0xad, 0xbe, 0xef, 1, 2, 3}.String(), "deadbeef…"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestMagicBytes(t *testing.T) {
	for _, tc := range []struct {
		m    uint32
		want string
	}{{RequestMagic, "DSTQ"}, {ReplyMagic, "DSTR"}, {HandshakeMagic, "DSTH"}} {
		b := binary.LittleEndian.AppendUint32(nil, tc.m)
		if string(b) != tc.want {
			t.Errorf("magic %#x reads %q, want %q", tc.m, b, tc.want)
		}
	}
}

func TestHeaderZeroAlloc(t *testing.T) {
	var b [RequestHeaderSize]byte
	var rb [ReplyHeaderSize]byte
	req := Request{Op: OpWrite, Flags: FlagFUA, ID: 1, Offset: 4096, Length: 4096, Floor: 1}
	rep := Reply{Op: OpRead, ID: 1, Length: 4096}
	n := testing.AllocsPerRun(1000, func() {
		req.Put(b[:])
		if _, err := ParseRequest(b[:], DefaultMaxTransfer); err != nil {
			t.Fatal(err)
		}
		rep.Put(rb[:])
		if _, err := ParseReply(rb[:]); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per Put/Parse round", n)
	}
}

func BenchmarkRequestPut(b *testing.B) {
	var buf [RequestHeaderSize]byte
	r := Request{Op: OpWrite, Flags: FlagFUA, ID: 1, Offset: 4096, Length: 4096, Floor: 1}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.ID = uint64(i)
		r.Put(buf[:])
	}
}

func BenchmarkParseRequest(b *testing.B) {
	var buf [RequestHeaderSize]byte
	r := Request{Op: OpWrite, Flags: FlagFUA, ID: 1, Offset: 4096, Length: 4096, Floor: 1}
	r.Put(buf[:])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(buf[:], DefaultMaxTransfer); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReplyPut(b *testing.B) {
	var buf [ReplyHeaderSize]byte
	r := Reply{Op: OpRead, ID: 1, Length: 4096}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.ID = uint64(i)
		r.Put(buf[:])
	}
}

func BenchmarkParseReply(b *testing.B) {
	var buf [ReplyHeaderSize]byte
	r := Reply{Op: OpRead, ID: 1, Length: 4096}
	r.Put(buf[:])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseReply(buf[:]); err != nil {
			b.Fatal(err)
		}
	}
}
