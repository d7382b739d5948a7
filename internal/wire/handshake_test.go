package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// Raw builders that do not use the code under test.

func rawAttr(typ uint16, v []byte) []byte {
	b := binary.LittleEndian.AppendUint16(nil, typ)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

func u8(v uint8) []byte   { return []byte{v} }
func u16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func rawMsg(typ MsgType, version uint16, attrs ...[]byte) []byte {
	body := bytes.Join(attrs, nil)
	b := []byte("DSTH")
	b = binary.LittleEndian.AppendUint16(b, version)
	b = append(b, byte(typ), 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

var tok = Token{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

func TestGoldenHello(t *testing.T) {
	h := &Hello{Version: 1, Export: "disk0", Features: FeatFlush | FeatFUA, Session: tok, HasSession: true, WantReadOnly: true}
	want := unhex(t, `
		44 53 54 48      # magic "DSTH"
		01 00            # version 1
		01               # HELLO
		00               # reserved
		2e 00 00 00      # body: 46 bytes
		01 80 05 00 64 69 73 6b 30              # EXPORT_NAME "disk0"
		02 00 08 00 03 00 00 00 00 00 00 00     # CLIENT_FEATURES FLUSH|FUA
		03 00 10 00 00 01 02 03 04 05 06 07
		            08 09 0a 0b 0c 0d 0e 0f     # SESSION
		04 00 01 00 01                          # WANT_READ_ONLY 1
	`)
	var buf bytes.Buffer
	if err := WriteHello(&buf, h); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteHello:\n got %x\nwant %x", buf.Bytes(), want)
	}
	if string(want[:4]) != "DSTH" {
		t.Fatal("magic")
	}
	got, err := ReadHello(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, *h) {
		t.Fatalf("ReadHello = %+v, want %+v", got, h)
	}
}

func goldenWelcome() *Welcome {
	return &Welcome{
		Version:       1,
		Session:       Token{0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f},
		Resumed:       true,
		Size:          1 << 30,
		LogicalBlock:  512,
		PhysicalBlock: 4096,
		MaxTransfer:   1 << 20,
		Features:      FeatFlush | FeatFUA | FeatResume,
		MaxInflight:   1024,
	}
}

func TestGoldenWelcome(t *testing.T) {
	w := goldenWelcome()
	want := unhex(t, `
		44 53 54 48   # "DSTH"
		01 00         # version 1
		02 00         # WELCOME, reserved
		56 00 00 00   # body: 86 bytes
		01 01 10 00 10 11 12 13 14 15 16 17
		            18 19 1a 1b 1c 1d 1e 1f  # SESSION
		02 01 01 00 01                       # RESUMED 1
		03 01 08 00 00 00 00 40 00 00 00 00  # EXPORT_SIZE 1 GiB
		04 01 04 00 00 02 00 00              # LOGICAL_BLOCK 512
		05 01 04 00 00 10 00 00              # PHYSICAL_BLOCK 4096
		06 01 04 00 00 00 10 00              # MAX_TRANSFER 1 MiB
		07 01 01 00 00                       # READ_ONLY 0
		08 01 08 00 13 00 00 00 00 00 00 00  # SERVER_FEATURES FLUSH|FUA|RESUME
		09 01 04 00 00 04 00 00              # MAX_INFLIGHT 1024
	`)
	var buf bytes.Buffer
	if err := WriteWelcome(&buf, w); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteWelcome:\n got %x\nwant %x", buf.Bytes(), want)
	}
	got, err := ReadWelcome(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, *w) {
		t.Fatalf("ReadWelcome = %+v, want %+v", got, w)
	}
}

func TestGoldenRefuse(t *testing.T) {
	want := unhex(t, `
		44 53 54 48  01 00  03 00  18 00 00 00   # "DSTH" v1 REFUSE, body 24
		01 02 02 00 03 00                        # CODE 3 NO_SUCH_EXPORT
		02 02 0e 00 6e 6f 20 73 75 63 68 20
		            65 78 70 6f 72 74            # REASON "no such export"
	`)
	var buf bytes.Buffer
	if err := WriteRefuse(&buf, &Refuse{Code: RefuseNoSuchExport, Reason: "no such export"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteRefuse:\n got %x\nwant %x", buf.Bytes(), want)
	}
	w, err := ReadWelcome(bytes.NewReader(want))
	var re *RefuseError
	if w != nil || !errors.As(err, &re) {
		t.Fatalf("ReadWelcome = %v, %v; want a *RefuseError", w, err)
	}
	if re.Code != RefuseNoSuchExport || re.Reason != "no such export" || re.Version != 1 {
		t.Fatalf("RefuseError = %+v", re)
	}
	if got, want := err.Error(), "exporter refused: no such export (NO_SUCH_EXPORT)"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if re.Retryable() {
		t.Fatal("NO_SUCH_EXPORT is retryable")
	}
}

// minimal valid HELLO attributes
var (
	aName     = rawAttr(AttrHelloExportName, []byte("vol-1.img_A"))
	aFeatures = rawAttr(AttrHelloFeatures, u64(uint64(KnownFeatures)))
)

func TestReadHello(t *testing.T) {
	type check func(t *testing.T, h *Hello)
	tests := []struct {
		name  string
		msg   []byte
		code  RefuseCode // 0: valid
		err   string
		check check
	}{
		{"minimal", rawMsg(MsgHello, 1, aName, aFeatures), 0, "", func(t *testing.T, h *Hello) {
			if h.Export != "vol-1.img_A" || h.Features != KnownFeatures || h.HasSession || h.Version != 1 {
				t.Errorf("%+v", h)
			}
		}},
		{"all", rawMsg(MsgHello, 1, aFeatures, rawAttr(AttrHelloSession, tok[:]), aName,
			rawAttr(AttrHelloWantRO, u8(1)), rawAttr(AttrHelloClientName, []byte("host.example — ü")),
			rawAttr(AttrHelloMaxInflight, u32(65536)), rawAttr(AttrHelloTagSize, u8(0))), 0, "",
			func(t *testing.T, h *Hello) {
				want := Hello{Version: 1, Export: "vol-1.img_A", Features: KnownFeatures, Session: tok, HasSession: true,
					WantReadOnly: true, ClientName: "host.example — ü", MaxInflight: 65536}
				if !reflect.DeepEqual(*h, want) {
					t.Errorf("got %+v\nwant %+v", h, want)
				}
			}},
		{"unknown features kept", rawMsg(MsgHello, 1, aName, rawAttr(AttrHelloFeatures, u64(1<<60))), 0, "", func(t *testing.T, h *Hello) {
			if h.Features != 1<<60 {
				t.Errorf("features %v", h.Features)
			}
		}},
		{"unknown non-critical skipped", rawMsg(MsgHello, 1, rawAttr(0x0777, []byte("future")), aName,
			rawAttr(AttrWelcomeSession, []byte{1}), aFeatures, rawAttr(0x7fff, nil)), 0, "", nil},
		{"higher version returned", rawMsg(MsgHello, 7, aName, aFeatures), 0, "", func(t *testing.T, h *Hello) {
			if h.Version != 7 {
				t.Errorf("version %d", h.Version)
			}
		}},
		{"max name", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, bytes.Repeat([]byte("a"), 255)), aFeatures), 0, "", nil},

		{"unknown critical", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(0x8777, u8(1))), RefuseUnsupported,
			"unknown critical attribute 0x8777 in HELLO", nil},
		{"welcome critical in hello", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(0x8101, nil)), RefuseUnsupported, "0x8101", nil},
		{"unknown critical beats bad value", rawMsg(MsgHello, 1, rawAttr(AttrHelloFeatures, u32(1)), aName, rawAttr(0xffff, nil)),
			RefuseUnsupported, "0xffff", nil},
		{"structure beats unknown critical", fixLen(rawMsg(MsgHello, 1, rawAttr(0x8777, nil), aName, aFeatures, []byte{1, 2})), RefuseMalformed, "attribute header truncated", nil},

		{"duplicate", rawMsg(MsgHello, 1, aName, aFeatures, aFeatures), RefuseMalformed, "attribute 0x0002 appears twice", nil},
		{"duplicate unknown", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(0x0999, nil), rawAttr(0x0999, u8(1))), RefuseMalformed, "0x0999 appears twice", nil},
		{"duplicate name", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloExportName, []byte("other"))), RefuseMalformed, "0x8001 appears twice", nil},
		{"truncated header", fixLen(rawMsg(MsgHello, 1, aName, aFeatures, []byte{5, 0})), RefuseMalformed, "attribute header truncated: 2 bytes left", nil},
		{"truncated value", fixLen(rawMsg(MsgHello, 1, aName, rawAttr(AttrHelloFeatures, u64(1))[:9])), RefuseMalformed,
			"attribute 0x0002 truncated: length 8, 5 bytes left", nil},
		{"attr too long", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(0x0777, make([]byte, 4097))), RefuseMalformed,
			"attribute 0x0777 has length 4097, limit 4096", nil},

		{"no name", rawMsg(MsgHello, 1, aFeatures), RefuseMalformed, "HELLO without EXPORT_NAME", nil},
		{"no features", rawMsg(MsgHello, 1, aName), RefuseMalformed, "HELLO without CLIENT_FEATURES", nil},
		{"empty body", rawMsg(MsgHello, 1), RefuseMalformed, "without EXPORT_NAME", nil},
		{"name empty", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, nil), aFeatures), RefuseMalformed, "export name is empty", nil},
		{"name too long", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, bytes.Repeat([]byte("a"), 256)), aFeatures), RefuseMalformed,
			"export name is 256 bytes, limit 255", nil},
		{"name dotdot slash", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, []byte("../x")), aFeatures), RefuseMalformed,
			`export name "../x" has byte 0x2f at offset 2`, nil},
		{"name space", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, []byte("my disk")), aFeatures), RefuseMalformed, "has byte 0x20 at offset 2", nil},
		{"name non-ascii", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, []byte("dïsk")), aFeatures), RefuseMalformed, "has byte 0xc3 at offset 1", nil},
		{"name nul", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, []byte("a\x00")), aFeatures), RefuseMalformed, "has byte 0x00 at offset 1", nil},
		{"name dot", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, []byte(".")), aFeatures), RefuseMalformed, `export name "." is not allowed`, nil},
		{"name dotdot", rawMsg(MsgHello, 1, rawAttr(AttrHelloExportName, []byte("..")), aFeatures), RefuseMalformed, `export name ".." is not allowed`, nil},
		{"features size", rawMsg(MsgHello, 1, aName, rawAttr(AttrHelloFeatures, u32(1))), RefuseMalformed, "CLIENT_FEATURES (0x0002) is 4 bytes, want 8", nil},
		{"session size", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloSession, tok[:15])), RefuseMalformed, "SESSION (0x0003) is 15 bytes, want 16", nil},
		{"bool size", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloWantRO, u16(1))), RefuseMalformed, "WANT_READ_ONLY (0x0004) is 2 bytes, want 1", nil},
		{"bool value", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloWantRO, u8(2))), RefuseMalformed, "boolean must be 0 or 1", nil},
		{"client name utf8", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloClientName, []byte{0xff, 'a'})), RefuseMalformed, "CLIENT_NAME is not valid UTF-8", nil},
		{"client name long", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloClientName, bytes.Repeat([]byte("h"), 256))), RefuseMalformed, "CLIENT_NAME is 256 bytes, limit 255", nil},
		{"max inflight 0", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloMaxInflight, u32(0))), RefuseMalformed, "MAX_INFLIGHT 0 is not in 1..65536", nil},
		{"max inflight big", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloMaxInflight, u32(65537))), RefuseMalformed, "MAX_INFLIGHT 65537", nil},
		{"tag size size", rawMsg(MsgHello, 1, aName, aFeatures, rawAttr(AttrHelloTagSize, u16(0))), RefuseMalformed, "TAG_SIZE (0x0007) is 2 bytes, want 1", nil},

		{"version 0", rawMsg(MsgHello, 0, aName, aFeatures), RefuseMalformed, "HELLO with version 0", nil},
		{"welcome type", rawMsg(MsgWelcome, 1, aName, aFeatures), RefuseMalformed, "got WELCOME, want HELLO", nil},
		{"type 0", rawMsg(0, 1, aName, aFeatures), RefuseMalformed, "unknown handshake message type 0", nil},
		{"type 4", rawMsg(4, 1, aName, aFeatures), RefuseMalformed, "unknown handshake message type 4", nil},
		{"magic", with(rawMsg(MsgHello, 1, aName, aFeatures), func(b []byte) { copy(b, "DSTQ") }), RefuseMalformed, `magic "DSTQ", want "DSTH"`, nil},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), RefuseMalformed, `magic "GET "`, nil},
		{"reserved", with(rawMsg(MsgHello, 1, aName, aFeatures), func(b []byte) { b[7] = 1 }), RefuseMalformed, "reserved byte 7 = 0x1", nil},
		{"body too long", with(rawMsg(MsgHello, 1), func(b []byte) { binary.LittleEndian.PutUint32(b[8:], 65537) }), RefuseMalformed,
			"HELLO body length 65537 exceeds 65536", nil},
		{"body huge", with(rawMsg(MsgHello, 1), func(b []byte) { binary.LittleEndian.PutUint32(b[8:], 0xffffffff) }), RefuseMalformed,
			"body length 4294967295 exceeds 65536", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.msg)
			h, err := ReadHello(r)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if r.Len() != 0 {
					t.Errorf("%d bytes left unread", r.Len())
				}
				if tc.check != nil {
					tc.check(t, h)
				}
				// Write it back and read it again.
				var buf bytes.Buffer
				if err := WriteHello(&buf, h); err != nil {
					t.Fatalf("WriteHello: %v", err)
				}
				h2, err := ReadHello(&buf)
				if err != nil || !reflect.DeepEqual(*h2, *h) {
					t.Fatalf("round trip: %+v, %v; want %+v", h2, err, h)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v; want %v %q", h, tc.code, tc.err)
			}
			var he *HandshakeError
			if !errors.As(err, &he) {
				t.Fatalf("error %v (%T) is not a *HandshakeError", err, err)
			}
			if !errors.Is(err, ErrHandshake) {
				t.Errorf("%v does not match ErrHandshake", err)
			}
			if he.Code != tc.code || !strings.Contains(he.Reason, tc.err) {
				t.Errorf("got %v %q; want %v %q", he.Code, he.Reason, tc.code, tc.err)
			}
			// The exporter's answer: a REFUSE the client can read.
			var buf bytes.Buffer
			if err := WriteRefuse(&buf, he.Refuse()); err != nil {
				t.Fatal(err)
			}
			_, err = ReadWelcome(&buf)
			var re *RefuseError
			if !errors.As(err, &re) || re.Code != tc.code || re.Reason != SanitizeReason(he.Reason) {
				t.Errorf("refuse round trip: %v", err)
			}
		})
	}
}

// fixLen rewrites the body length of a raw message to what follows the
// header.
func fixLen(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-HandshakeHeaderSize))
	return b
}

func TestReadHelloIOErrors(t *testing.T) {
	msg := rawMsg(MsgHello, 1, aName, aFeatures)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"short header", msg[:5], io.ErrUnexpectedEOF},
		{"no body", msg[:HandshakeHeaderSize], io.ErrUnexpectedEOF},
		{"short body", msg[:len(msg)-1], io.ErrUnexpectedEOF},
	} {
		_, err := ReadHello(bytes.NewReader(tc.b))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		var he *HandshakeError
		if errors.As(err, &he) {
			t.Errorf("%s: I/O error reported as %v", tc.name, err)
		}
	}
}

// countingReader hands out src and then an endless stream of zeros,
// counting what it gave.
type countingReader struct {
	src []byte
	n   int
}

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		if r.n < len(r.src) {
			p[i] = r.src[r.n]
		} else {
			p[i] = 0
		}
		r.n++
	}
	return len(p), nil
}

func TestReadOversizeReadsOnlyHeader(t *testing.T) {
	for _, typ := range []MsgType{MsgHello, MsgWelcome, MsgRefuse} {
		hdr := rawMsg(typ, 1)
		binary.LittleEndian.PutUint32(hdr[8:], 1<<31)
		r := &countingReader{src: hdr}
		var err error
		if typ == MsgHello {
			_, err = ReadHello(r)
		} else {
			_, err = ReadWelcome(r)
		}
		var he *HandshakeError
		if !errors.As(err, &he) || he.Code != RefuseMalformed {
			t.Errorf("%v: %v", typ, err)
		}
		if r.n != HandshakeHeaderSize {
			t.Errorf("%v: read %d bytes, want only the header", typ, r.n)
		}
	}
}

// TestReadAllocationBound: a body packed with 16380 empty attributes costs
// no more than the body itself (the attributes are not materialized).
func TestReadAllocationBound(t *testing.T) {
	var attrs [][]byte
	attrs = append(attrs, aName, aFeatures)
	size := len(aName) + len(aFeatures)
	for i := 0; size+4 <= MaxHandshakeBody; i++ {
		attrs = append(attrs, rawAttr(uint16(0x1000+i), nil))
		size += 4
	}
	msg := rawMsg(MsgHello, 1, attrs...)
	if len(msg)-HandshakeHeaderSize > MaxHandshakeBody {
		t.Fatalf("test body is %d bytes", len(msg)-HandshakeHeaderSize)
	}
	if _, err := ReadHello(bytes.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	const runs = 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		if _, err := ReadHello(bytes.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	perRun := (after.TotalAlloc - before.TotalAlloc) / runs
	if perRun > MaxHandshakeBody+4096 {
		t.Fatalf("ReadHello allocated %d bytes per call for a %d-byte body", perRun, len(msg)-HandshakeHeaderSize)
	}
	t.Logf("%d bytes allocated per ReadHello of a %d-byte body", perRun, len(msg)-HandshakeHeaderSize)
}

// valid WELCOME attributes, by type, for building variants.
func welcomeAttrs() map[uint16][]byte {
	return map[uint16][]byte{
		AttrWelcomeSession:      tok[:],
		AttrWelcomeExportSize:   u64(1 << 30),
		AttrWelcomeLogicalBlock: u32(4096),
		AttrWelcomeMaxTransfer:  u32(1 << 20),
		AttrWelcomeMaxInflight:  u32(128),
		AttrWelcomeFeatures:     u64(uint64(FeatFlush | FeatDiscard)),
	}
}

func welcomeMsg(version uint16, change map[uint16][]byte, extra ...[]byte) []byte {
	m := welcomeAttrs()
	for k, v := range change {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	var attrs [][]byte
	for typ := uint16(0x0101); typ <= 0x010C; typ++ {
		if v, ok := m[typ]; ok {
			attrs = append(attrs, rawAttr(typ, v))
		}
	}
	return rawMsg(MsgWelcome, version, append(attrs, extra...)...)
}

func TestReadWelcome(t *testing.T) {
	type change = map[uint16][]byte
	tests := []struct {
		name  string
		msg   []byte
		code  RefuseCode // 0: valid
		err   string
		check func(t *testing.T, w *Welcome)
	}{
		{"minimal", welcomeMsg(1, nil), 0, "", func(t *testing.T, w *Welcome) {
			want := Welcome{Version: 1, Session: tok, Size: 1 << 30, LogicalBlock: 4096, PhysicalBlock: 4096,
				MaxTransfer: 1 << 20, Features: FeatFlush | FeatDiscard, MaxInflight: 128, DiscardGranularity: 4096}
			if !reflect.DeepEqual(*w, want) {
				t.Errorf("got %+v\nwant %+v", w, want)
			}
		}},
		{"all", welcomeMsg(1, change{AttrWelcomeResumed: u8(1), AttrWelcomePhysicalBlock: u32(1 << 20),
			AttrWelcomeReadOnly: u8(1), AttrWelcomeDiscardGranularity: u32(1 << 16), AttrWelcomeTagSize: u8(0),
			AttrWelcomeExporterName: []byte("exporter-1")}), 0, "",
			func(t *testing.T, w *Welcome) {
				if !w.Resumed || !w.ReadOnly || w.PhysicalBlock != 1<<20 || w.DiscardGranularity != 1<<16 || w.ExporterName != "exporter-1" {
					t.Errorf("%+v", w)
				}
			}},
		{"no discard no granularity", welcomeMsg(1, change{AttrWelcomeFeatures: u64(0)}), 0, "", func(t *testing.T, w *Welcome) {
			if w.DiscardGranularity != 0 || w.Features != 0 {
				t.Errorf("%+v", w)
			}
		}},
		{"limits", welcomeMsg(1, change{AttrWelcomeLogicalBlock: u32(65536), AttrWelcomeMaxTransfer: u32(32 << 20),
			AttrWelcomeMaxInflight: u32(65536), AttrWelcomeExportSize: u64(math.MaxInt64 &^ 65535)}), 0, "", nil},
		{"logical 512, size 0, inflight 1", welcomeMsg(1, change{AttrWelcomeLogicalBlock: u32(512), AttrWelcomeMaxTransfer: u32(512),
			AttrWelcomeMaxInflight: u32(1), AttrWelcomeExportSize: u64(0)}), 0, "", nil},
		{"unknown non-critical", welcomeMsg(1, nil, rawAttr(0x01ff, []byte("x")), rawAttr(AttrHelloExportName&^AttrCritical, nil)), 0, "", nil},

		{"unknown critical", welcomeMsg(1, nil, rawAttr(0x81ff, nil)), RefuseUnsupported, "unknown critical attribute 0x81ff in WELCOME", nil},
		{"hello's critical", welcomeMsg(1, nil, rawAttr(AttrHelloExportName, []byte("x"))), RefuseUnsupported, "0x8001", nil},
		{"version 0", welcomeMsg(0, nil), RefuseMalformed, "WELCOME with version 0", nil},
		{"version 2", welcomeMsg(2, nil), RefuseVersion, "exporter chose version 2", nil},
		{"hello type", rawMsg(MsgHello, 1, aName, aFeatures), RefuseMalformed, "got HELLO, want WELCOME or REFUSE", nil},
		{"duplicate", welcomeMsg(1, nil, rawAttr(AttrWelcomeSession, tok[:])), RefuseMalformed, "0x0101 appears twice", nil},
		{"truncated", fixLen(welcomeMsg(1, nil, []byte{1})), RefuseMalformed, "truncated", nil},

		{"no session", welcomeMsg(1, change{AttrWelcomeSession: nil}), RefuseMalformed, "WELCOME without SESSION", nil},
		{"no size", welcomeMsg(1, change{AttrWelcomeExportSize: nil}), RefuseMalformed, "WELCOME without EXPORT_SIZE", nil},
		{"no logical", welcomeMsg(1, change{AttrWelcomeLogicalBlock: nil}), RefuseMalformed, "WELCOME without LOGICAL_BLOCK", nil},
		{"no max transfer", welcomeMsg(1, change{AttrWelcomeMaxTransfer: nil}), RefuseMalformed, "WELCOME without MAX_TRANSFER", nil},
		{"no max inflight", welcomeMsg(1, change{AttrWelcomeMaxInflight: nil}), RefuseMalformed, "WELCOME without MAX_INFLIGHT", nil},
		{"no features", welcomeMsg(1, change{AttrWelcomeFeatures: nil}), RefuseMalformed, "WELCOME without SERVER_FEATURES", nil},

		{"session size", welcomeMsg(1, change{AttrWelcomeSession: tok[:8]}), RefuseMalformed, "SESSION (0x0101) is 8 bytes, want 16", nil},
		{"size size", welcomeMsg(1, change{AttrWelcomeExportSize: u32(1)}), RefuseMalformed, "EXPORT_SIZE (0x0103) is 4 bytes, want 8", nil},
		{"resumed 2", welcomeMsg(1, change{AttrWelcomeResumed: u8(2)}), RefuseMalformed, "RESUMED (0x0102) is 2, a boolean must be 0 or 1", nil},
		{"read only size", welcomeMsg(1, change{AttrWelcomeReadOnly: nil}, rawAttr(AttrWelcomeReadOnly, []byte{})), RefuseMalformed, "READ_ONLY (0x0107) is 0 bytes, want 1", nil},
		{"logical 256", welcomeMsg(1, change{AttrWelcomeLogicalBlock: u32(256)}), RefuseMalformed, "logical block 256 is not a power of two in 512..65536", nil},
		{"logical 3000", welcomeMsg(1, change{AttrWelcomeLogicalBlock: u32(3072)}), RefuseMalformed, "logical block 3072", nil},
		{"logical 128k", welcomeMsg(1, change{AttrWelcomeLogicalBlock: u32(1 << 17)}), RefuseMalformed, "logical block 131072", nil},
		{"physical small", welcomeMsg(1, change{AttrWelcomePhysicalBlock: u32(512)}), RefuseMalformed, "physical block 512 is not a power of two ≥ the logical block 4096", nil},
		{"physical odd", welcomeMsg(1, change{AttrWelcomePhysicalBlock: u32(12288)}), RefuseMalformed, "physical block 12288", nil},
		{"physical 0", welcomeMsg(1, change{AttrWelcomePhysicalBlock: u32(0)}), RefuseMalformed, "PHYSICAL_BLOCK is 0", nil},
		{"size unaligned", welcomeMsg(1, change{AttrWelcomeExportSize: u64(1<<30 + 512)}), RefuseMalformed, "export size 1073742336 is not a multiple of the logical block 4096", nil},
		{"size huge", welcomeMsg(1, change{AttrWelcomeExportSize: u64(1 << 63)}), RefuseMalformed, "exceeds 2^63-1", nil},
		{"max transfer 0", welcomeMsg(1, change{AttrWelcomeMaxTransfer: u32(0)}), RefuseMalformed, "max transfer 0 is not a multiple", nil},
		{"max transfer unaligned", welcomeMsg(1, change{AttrWelcomeMaxTransfer: u32(6000)}), RefuseMalformed, "max transfer 6000", nil},
		{"max transfer big", welcomeMsg(1, change{AttrWelcomeMaxTransfer: u32(64 << 20)}), RefuseMalformed, "max transfer 67108864", nil},
		{"max inflight 0", welcomeMsg(1, change{AttrWelcomeMaxInflight: u32(0)}), RefuseMalformed, "max inflight 0 is not in 1..65536", nil},
		{"max inflight big", welcomeMsg(1, change{AttrWelcomeMaxInflight: u32(65537)}), RefuseMalformed, "max inflight 65537", nil},
		{"discard 0", welcomeMsg(1, change{AttrWelcomeDiscardGranularity: u32(0)}), RefuseMalformed, "DISCARD_GRANULARITY is 0", nil},
		{"discard unaligned", welcomeMsg(1, change{AttrWelcomeDiscardGranularity: u32(512)}), RefuseMalformed, "discard granularity 512 is not a multiple", nil},
		{"exporter name utf8", welcomeMsg(1, change{AttrWelcomeExporterName: []byte{0xc3}}), RefuseMalformed, "EXPORTER_NAME is not valid UTF-8", nil},
		{"tag size size", welcomeMsg(1, change{AttrWelcomeTagSize: u32(0)}), RefuseMalformed, "TAG_SIZE (0x010b) is 4 bytes, want 1", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := ReadWelcome(bytes.NewReader(tc.msg))
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if tc.check != nil {
					tc.check(t, w)
				}
				var buf bytes.Buffer
				if err := WriteWelcome(&buf, w); err != nil {
					t.Fatalf("WriteWelcome: %v", err)
				}
				w2, err := ReadWelcome(&buf)
				if err != nil || !reflect.DeepEqual(*w2, *w) {
					t.Fatalf("round trip: %+v, %v; want %+v", w2, err, w)
				}
				return
			}
			var he *HandshakeError
			if !errors.As(err, &he) {
				t.Fatalf("got %v, %v; want a *HandshakeError %v %q", w, err, tc.code, tc.err)
			}
			if he.Code != tc.code || !strings.Contains(he.Reason, tc.err) {
				t.Errorf("got %v %q; want %v %q", he.Code, he.Reason, tc.code, tc.err)
			}
		})
	}
}

func TestReadRefuse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		msg    []byte
		code   RefuseCode // of the RefuseError; 0: want a HandshakeError
		reason string     // reason, or error fragment
	}{
		{"busy", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(6)), rawAttr(AttrRefuseReason, []byte("shutting down"))), RefuseBusy, "shutting down"},
		{"no reason", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(4))), RefuseAccessDenied, ""},
		{"version refusal from v9", rawMsg(MsgRefuse, 9, rawAttr(AttrRefuseReason, []byte("this exporter speaks version 9 only")), rawAttr(AttrRefuseCode, u16(2))),
			RefuseVersion, "this exporter speaks version 9 only"},
		{"future code", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(77))), RefuseCode(77), ""},
		{"unknown non-critical", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(1)), rawAttr(0x0203, nil)), RefuseMalformed, ""},

		{"no code", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseReason, []byte("x"))), 0, "REFUSE without CODE"},
		{"code 0", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(0))), 0, "REFUSE with CODE 0"},
		{"code size", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u32(1))), 0, "CODE (0x0201) is 4 bytes, want 2"},
		{"reason utf8", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(1)), rawAttr(AttrRefuseReason, []byte{0xfe})), 0, "REASON is not valid UTF-8"},
		{"reason long", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(1)), rawAttr(AttrRefuseReason, bytes.Repeat([]byte("r"), 256))), 0, "REASON is 256 bytes"},
		{"unknown critical", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(1)), rawAttr(0x8203, nil)), 0, "unknown critical attribute 0x8203 in REFUSE"},
		{"duplicate", rawMsg(MsgRefuse, 1, rawAttr(AttrRefuseCode, u16(1)), rawAttr(AttrRefuseCode, u16(2))), 0, "appears twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := ReadWelcome(bytes.NewReader(tc.msg))
			if w != nil {
				t.Fatalf("got a Welcome %+v", w)
			}
			if tc.code == 0 {
				var he *HandshakeError
				if !errors.As(err, &he) || !strings.Contains(he.Reason, tc.reason) {
					t.Fatalf("got %v, want a *HandshakeError with %q", err, tc.reason)
				}
				return
			}
			var re *RefuseError
			if !errors.As(err, &re) || re.Code != tc.code || re.Reason != tc.reason {
				t.Fatalf("got %#v, want a RefuseError %v %q", err, tc.code, tc.reason)
			}
			if !strings.HasPrefix(err.Error(), "exporter refused: ") || !strings.HasSuffix(err.Error(), "("+tc.code.String()+")") {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestRefuseErrorText(t *testing.T) {
	for _, tc := range []struct {
		e    RefuseError
		want string
	}{
		{RefuseError{Code: RefuseBusy, Reason: "try later"}, "exporter refused: try later (BUSY)"},
		{RefuseError{Code: RefuseAccessDenied}, "exporter refused: no reason given (ACCESS_DENIED)"},
		{RefuseError{Code: RefuseMalformed, Reason: "bad\x1b[31mred\nline"}, "exporter refused: bad\uFFFD[31mred\uFFFDline (MALFORMED)"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if !(&RefuseError{Code: RefuseBusy}).Retryable() {
		t.Error("BUSY is not retryable")
	}
}

func TestWriteValidation(t *testing.T) {
	var buf bytes.Buffer
	for _, h := range []*Hello{
		{Export: ""},
		{Export: "../etc"},
		{Export: "ok", ClientName: strings.Repeat("x", 256)},
		{Export: "ok", ClientName: "\xff"},
		{Export: "ok", MaxInflight: 65537},
	} {
		if err := WriteHello(&buf, h); err == nil {
			t.Errorf("WriteHello(%+v) accepted", h)
		}
	}
	for _, change := range []func(w *Welcome){
		func(w *Welcome) { w.LogicalBlock = 0 },
		func(w *Welcome) { w.PhysicalBlock = 256 },
		func(w *Welcome) { w.Size++ },
		func(w *Welcome) { w.MaxTransfer = 0 },
		func(w *Welcome) { w.MaxInflight = 0 },
		func(w *Welcome) { w.DiscardGranularity = 100 },
		func(w *Welcome) { w.ExporterName = strings.Repeat("x", 300) },
	} {
		w := goldenWelcome()
		change(w)
		if err := WriteWelcome(&buf, w); err == nil {
			t.Errorf("WriteWelcome(%+v) accepted", w)
		}
	}
	if err := WriteRefuse(&buf, &Refuse{Reason: "x"}); err == nil {
		t.Error("WriteRefuse with code 0 accepted")
	}
	if buf.Len() != 0 {
		t.Errorf("invalid messages wrote %d bytes", buf.Len())
	}
}

func TestWriteDefaults(t *testing.T) {
	// Version 0 means Version; PhysicalBlock 0 means LogicalBlock; DISCARD
	// without granularity means LogicalBlock.
	var buf bytes.Buffer
	if err := WriteHello(&buf, &Hello{Export: "a", Features: FeatFlush}); err != nil {
		t.Fatal(err)
	}
	h, err := ReadHello(&buf)
	if err != nil || h.Version != Version {
		t.Fatalf("%+v, %v", h, err)
	}
	w := &Welcome{Session: tok, Size: 8192, LogicalBlock: 4096, MaxTransfer: 4096, MaxInflight: 1, Features: FeatDiscard}
	if err := WriteWelcome(&buf, w); err != nil {
		t.Fatal(err)
	}
	got, err := ReadWelcome(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != Version || got.PhysicalBlock != 4096 || got.DiscardGranularity != 4096 {
		t.Fatalf("%+v", got)
	}
	if err := WriteRefuse(&buf, &Refuse{Code: RefuseBusy}); err != nil {
		t.Fatal(err)
	}
	_, err = ReadWelcome(&buf)
	var re *RefuseError
	if !errors.As(err, &re) || re.Version != Version || re.Reason != "" {
		t.Fatalf("%v", err)
	}
}

func TestWriteRefuseSanitizes(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	for _, tc := range []struct{ in, want string }{
		{long, strings.Repeat("é", 127)}, // 254 bytes: cut at a character boundary
		{strings.Repeat("a", 300), strings.Repeat("a", 255)},
		{"bad \xff byte", "bad \uFFFD byte"},
	} {
		var buf bytes.Buffer
		if err := WriteRefuse(&buf, &Refuse{Code: RefuseMalformed, Reason: tc.in}); err != nil {
			t.Fatal(err)
		}
		_, err := ReadWelcome(&buf)
		var re *RefuseError
		if !errors.As(err, &re) || re.Reason != tc.want {
			t.Errorf("got %v, want reason %q", err, tc.want)
		}
	}
}

// writeCounter counts Write calls and can fail them short.
type writeCounter struct {
	calls int
	short bool
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.calls++
	if w.short {
		return len(p) / 2, nil
	}
	return len(p), nil
}

func TestWriteSingleCall(t *testing.T) {
	w := &writeCounter{}
	_ = WriteHello(w, &Hello{Export: "a", ClientName: "b", HasSession: true, MaxInflight: 4})
	_ = WriteWelcome(w, goldenWelcome())
	_ = WriteRefuse(w, &Refuse{Code: RefuseBusy, Reason: "x"})
	if w.calls != 3 {
		t.Fatalf("%d Write calls for 3 messages", w.calls)
	}
	w.short = true
	if err := WriteHello(w, &Hello{Export: "a"}); !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("short write: %v", err)
	}
}

func TestAttrs(t *testing.T) {
	attrs := []Attr{{Type: 0x8001, Value: []byte("x")}, {Type: 2, Value: nil}, {Type: 0xffff, Value: make([]byte, 4096)}}
	b, err := AppendAttrs([]byte("prefix"), attrs)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:6]) != "prefix" {
		t.Fatal("prefix lost")
	}
	want := unhex(t, "01 80 01 00 78  02 00 00 00  ff ff 00 10")
	if !bytes.Equal(b[6:6+len(want)], want) || len(b) != 6+len(want)+4096 {
		t.Fatalf("AppendAttrs = %x...", b[:min(len(b), 32)])
	}
	got, err := ParseAttrs(b[6:])
	if err != nil || len(got) != 3 {
		t.Fatalf("ParseAttrs = %v, %v", got, err)
	}
	for i := range got {
		if got[i].Type != attrs[i].Type || !bytes.Equal(got[i].Value, attrs[i].Value) {
			t.Errorf("attr %d: %+v", i, got[i])
		}
	}
	if !got[0].Critical() || got[1].Critical() || !got[2].Critical() {
		t.Error("Critical")
	}
	if a, err := ParseAttrs(nil); err != nil || len(a) != 0 {
		t.Errorf("empty body: %v, %v", a, err)
	}

	for _, bad := range [][]Attr{
		{{Type: 1, Value: make([]byte, 4097)}},
		{{Type: 1}, {Type: 2}, {Type: 1}},
		func() []Attr { // 17 × (4 + 4096) > 65536
			var a []Attr
			for i := range 17 {
				a = append(a, Attr{Type: uint16(i), Value: make([]byte, 4096)})
			}
			return a
		}(),
	} {
		if _, err := AppendAttrs(nil, bad); err == nil {
			t.Errorf("AppendAttrs accepted %d attributes", len(bad))
		}
	}
	for _, bad := range []struct {
		body []byte
		err  string
	}{
		{[]byte{1}, "attribute header truncated: 1 bytes left"},
		{[]byte{1, 0, 1, 0}, "attribute 0x0001 truncated: length 1, 0 bytes left"},
		{append(rawAttr(1, nil), rawAttr(1, nil)...), "attribute 0x0001 appears twice"},
		{rawAttr(1, make([]byte, 4097)), "attribute 0x0001 has length 4097, limit 4096"},
		{make([]byte, 65540), "body is 65540 bytes, limit 65536"},
	} {
		_, err := ParseAttrs(bad.body)
		var he *HandshakeError
		if !errors.As(err, &he) || he.Code != RefuseMalformed || !strings.Contains(he.Reason, bad.err) {
			t.Errorf("ParseAttrs: %v, want %q", err, bad.err)
		}
	}
}

func TestValidExportName(t *testing.T) {
	for _, ok := range []string{"a", "disk0", "A.b_c-d", "...", ".hidden", "-", strings.Repeat("z", 255)} {
		if err := ValidExportName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "a b", "dïsk", "a\x00", "a:b", strings.Repeat("z", 256)} {
		if err := ValidExportName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestNegotiateVersion(t *testing.T) {
	for _, tc := range []struct {
		client, want uint16
		ok           bool
	}{{0, 0, false}, {1, 1, true}, {2, 1, true}, {65535, 1, true}} {
		v, ok := NegotiateVersion(tc.client)
		if v != tc.want || ok != tc.ok {
			t.Errorf("NegotiateVersion(%d) = %d, %v", tc.client, v, ok)
		}
	}
}

func TestToken(t *testing.T) {
	a, b := NewToken(), NewToken()
	if a == b || a.IsZero() || !(Token{}).IsZero() {
		t.Fatal("NewToken")
	}
	if s := a.String(); len(s) != 8+len("…") || strings.Contains(s, "%") {
		t.Fatalf("String = %q", s)
	}
}

// The CRYPTO attributes of PROTOCOL.md §8.2 are known critical attributes:
// carried through as opaque values, absent when empty.
func TestCryptoAttrRoundTrip(t *testing.T) {
	offer := []byte{2, 1, 9, 9, 9}
	var b bytes.Buffer
	if err := WriteHello(&b, &Hello{Export: "d", Features: FeatFlush, TagSize: 16, Crypto: offer}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b.Bytes(), []byte{0x08, 0x80, 5, 0, 2, 1, 9, 9, 9}) {
		t.Fatalf("HELLO has no CRYPTO attribute 0x8008: % x", b.Bytes())
	}
	h, err := ReadHello(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Crypto, offer) || h.TagSize != 16 {
		t.Fatalf("HELLO Crypto %x TagSize %d, want %x 16", h.Crypto, h.TagSize, offer)
	}
	w := &Welcome{Session: NewToken(), Size: 1 << 20, LogicalBlock: 512, MaxTransfer: 1 << 16, MaxInflight: 8, TagSize: 4, Crypto: []byte{1, 1}}
	b.Reset()
	if err := WriteWelcome(&b, w); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b.Bytes(), []byte{0x0d, 0x81, 2, 0, 1, 1}) {
		t.Fatalf("WELCOME has no CRYPTO attribute 0x810D: % x", b.Bytes())
	}
	got, err := ReadWelcome(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Crypto, []byte{1, 1}) || got.TagSize != 4 {
		t.Fatalf("WELCOME Crypto %x TagSize %d", got.Crypto, got.TagSize)
	}
	b.Reset()
	if err := WriteHello(&b, &Hello{Export: "d", Features: FeatFlush}); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b.Bytes(), []byte{0x08, 0x80}) {
		t.Fatal("HELLO without crypto carries a CRYPTO attribute")
	}
}
