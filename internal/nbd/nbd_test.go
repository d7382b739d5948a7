package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	r := Request{Flags: CmdFlagFUA | CmdFlagNoHole, Type: CmdWriteZeroes, Cookie: 0xdeadbeefcafe, Offset: 1 << 40, Length: 65536}
	b := AppendRequest(nil, r)
	if len(b) != RequestLen {
		t.Fatalf("request is %d bytes, want %d", len(b), RequestLen)
	}
	// Wire layout from the spec: magic, flags, type, cookie, offset, length.
	want := []byte{0x25, 0x60, 0x95, 0x13, 0, 3, 0, 6, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding\n got %x\nwant %x", b, want)
	}
	got, err := ParseRequest(b)
	if err != nil || got != r {
		t.Fatalf("ParseRequest = %+v, %v; want %+v", got, err, r)
	}
}

func TestParseBad(t *testing.T) {
	req := AppendRequest(nil, Request{Type: CmdRead, Length: 1})
	badMagic := bytes.Clone(req)
	badMagic[0] ^= 1
	opt := AppendOption(nil, OptGo, nil)
	bigOpt := bytes.Clone(opt)
	binary.BigEndian.PutUint32(bigOpt[12:], MaxOptionLen+1)
	for _, tc := range []struct {
		name string
		err  func() error
	}{
		{"request short", func() error { _, err := ParseRequest(req[:27]); return err }},
		{"request magic", func() error { _, err := ParseRequest(badMagic); return err }},
		{"option magic", func() error { o := bytes.Clone(opt); o[7] = 0; _, err := ParseOptionHeader(o); return err }},
		{"option too long", func() error { _, err := ParseOptionHeader(bigOpt); return err }},
		{"client flags unknown bit", func() error { _, err := ParseClientFlags([]byte{0, 0, 0, 4}); return err }},
		{"info request short", func() error { _, err := ParseInfoRequest([]byte{0, 0, 0, 0, 0}); return err }},
		{"info request name overflows", func() error { _, err := ParseInfoRequest([]byte{0, 0, 0, 9, 'a', 0, 0}); return err }},
		{"info request odd count", func() error { _, err := ParseInfoRequest([]byte{0, 0, 0, 0, 0, 2, 0, 3}); return err }},
		{"info request trailing", func() error { _, err := ParseInfoRequest([]byte{0, 0, 0, 0, 0, 0, 1}); return err }},
		{"info request NUL", func() error { _, err := ParseInfoRequest([]byte{0, 0, 0, 1, 0, 0, 0}); return err }},
		{"export name not UTF-8", func() error { _, err := ParseExportName([]byte{0xff}); return err }},
		{"export name too long", func() error { _, err := ParseExportName(make([]byte, MaxStringLen+1)); return err }},
		{"reply magic", func() error { _, _, err := ParseReply([]byte{1, 2, 3, 4, 5}); return err }},
		{"chunk too long", func() error {
			b := AppendChunkHeader(nil, 0, ChunkOffsetData, 1, 8+MaxPayload+1)
			_, _, err := ParseReply(b)
			return err
		}},
		{"error chunk length", func() error { _, _, err := ParseErrorChunk([]byte{0, 0, 0, 5, 0, 2, 'x'}); return err }},
		{"error chunk zero", func() error { _, _, err := ParseErrorChunk([]byte{0, 0, 0, 0, 0, 0}); return err }},
		{"info export size", func() error { _, err := ParseInfo([]byte{0, 0, 1}); return err }},
		{"greeting oldstyle", func() error {
			g := AppendGreeting(nil, 0)
			binary.BigEndian.PutUint64(g[8:], 0x00420281861253)
			_, err := ParseGreeting(g)
			return err
		}},
	} {
		var pe *ProtocolError
		if err := tc.err(); !errors.As(err, &pe) {
			t.Errorf("%s: error %v, want a *ProtocolError", tc.name, err)
		}
	}
}

func TestInfoRequestRoundTrip(t *testing.T) {
	for _, r := range []InfoRequest{
		{Name: "", Infos: nil},
		{Name: "disk0", Infos: []InfoType{InfoBlockSize, InfoName}},
		{Name: strings.Repeat("é", MaxStringLen/2), Infos: []InfoType{7, 0xffff}},
	} {
		got, err := ParseInfoRequest(AppendInfoRequest(nil, r))
		if err != nil || got.Name != r.Name || len(got.Infos) != len(r.Infos) {
			t.Fatalf("round trip of %q: %+v, %v", r.Name[:min(len(r.Name), 8)], got, err)
		}
		for i := range r.Infos {
			if got.Infos[i] != r.Infos[i] {
				t.Fatalf("info %d: %d, want %d", i, got.Infos[i], r.Infos[i])
			}
		}
	}
}

func TestReplies(t *testing.T) {
	b := AppendSimpleReply(nil, EIO, 42)
	r, n, err := ParseReply(b)
	if err != nil || n != SimpleReplyLen || r.Structured || r.Errno != EIO || r.Cookie != 42 {
		t.Fatalf("simple reply: %+v %d %v", r, n, err)
	}
	b = AppendDataChunk(nil, 7, 4096, 512)
	r, n, err = ParseReply(b)
	if err != nil || n != StructuredReplyLen || !r.Structured || r.Type != ChunkOffsetData || r.Flags != ChunkFlagDone || r.Length != 520 || r.Cookie != 7 {
		t.Fatalf("data chunk: %+v %d %v", r, n, err)
	}
	if off := binary.BigEndian.Uint64(b[StructuredReplyLen:]); off != 4096 {
		t.Fatalf("data chunk offset %d", off)
	}
	long := strings.Repeat("x", MaxStringLen+10)
	b = AppendErrorChunk(nil, 9, ENOSPC, long)
	r, n, err = ParseReply(b)
	if err != nil || r.Type != ChunkError || int(r.Length) != len(b)-n {
		t.Fatalf("error chunk: %+v %v", r, err)
	}
	e, msg, err := ParseErrorChunk(b[n:])
	if err != nil || e != ENOSPC || len(msg) != MaxStringLen {
		t.Fatalf("error chunk payload: %v %d %v", e, len(msg), err)
	}
}

func TestFromErrno(t *testing.T) {
	for in, want := range map[syscall.Errno]Errno{
		0: 0, syscall.EPERM: EPERM, syscall.EROFS: EPERM, syscall.EIO: EIO, syscall.EINVAL: EINVAL,
		syscall.ENOSPC: ENOSPC, syscall.EDQUOT: ENOSPC, syscall.EOPNOTSUPP: ENOTSUP, syscall.EBADF: EIO,
		syscall.ENOMEM: ENOMEM, syscall.EOVERFLOW: EOVERFLOW, syscall.ESHUTDOWN: ESHUTDOWN,
	} {
		if got := FromErrno(in); got != want {
			t.Errorf("FromErrno(%v) = %v, want %v", in, got, want)
		}
	}
	if s := (FlagHasFlags | FlagReadOnly | 1<<15).String(); s != "HAS_FLAGS|READ_ONLY|0x8000" {
		t.Errorf("flags string %q", s)
	}
}

// testHandler serves two exports.
type testHandler struct{}

var testExports = []ExportInfo{
	{Name: "disk", Description: "a disk", Size: 1 << 20, Flags: FlagSendFlush, MinBlock: 512, PrefBlock: 4096, MaxBlock: 1 << 20},
	{Name: "ro", Size: 4096, Flags: FlagReadOnly, MinBlock: 4096, PrefBlock: 4096, MaxBlock: 65536},
}

func (testHandler) Exports() []ExportInfo { return testExports }
func (testHandler) Export(name string) (ExportInfo, error) {
	for _, e := range testExports {
		if e.Name == name {
			return e, nil
		}
	}
	if name == "secret" {
		return ExportInfo{}, ErrPolicy
	}
	return ExportInfo{}, ErrUnknownExport
}

// negotiate runs Negotiate on one end of a pipe and client on the other.
func negotiate(t *testing.T, client func(c net.Conn)) (*Negotiated, error) {
	t.Helper()
	s, c := net.Pipe()
	type res struct {
		n   *Negotiated
		err error
	}
	ch := make(chan res, 1)
	go func() {
		n, err := Negotiate(s, testHandler{})
		s.Close()
		ch <- res{n, err}
	}()
	client(c)
	c.Close()
	r := <-ch
	return r.n, r.err
}

func TestNegotiateGo(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       ClientOptions
		wantErr    ReplyType
		wantAgreed bool
	}{
		{"structured with block size", ClientOptions{Export: "disk", Structured: true, BlockSize: true}, 0, true},
		{"plain", ClientOptions{Export: "ro"}, 0, false},
		{"unknown export", ClientOptions{Export: "nope"}, RepErrUnknown, false},
		{"policy", ClientOptions{Export: "secret"}, RepErrPolicy, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var info ExportInfo
			var structured bool
			var cerr error
			n, err := negotiate(t, func(c net.Conn) { info, structured, cerr = ClientGo(c, tc.opts) })
			if tc.wantErr != 0 {
				var oe *OptionError
				if !errors.As(cerr, &oe) || oe.Type != tc.wantErr {
					t.Fatalf("client error %v, want reply %#x", cerr, uint32(tc.wantErr))
				}
				if !errors.Is(err, ErrAborted) {
					t.Fatalf("server: %v, want ErrAborted once the client hung up", err)
				}
				return
			}
			if cerr != nil || err != nil {
				t.Fatalf("client %v, server %v", cerr, err)
			}
			want, _ := testHandler{}.Export(tc.opts.Export)
			if info.Size != want.Size || info.Flags != want.Flags|FlagHasFlags || info.Name != want.Name {
				t.Fatalf("client saw %+v, want %+v", info, want)
			}
			if tc.opts.BlockSize && (info.MinBlock != want.MinBlock || info.PrefBlock != want.PrefBlock || info.MaxBlock != want.MaxBlock) {
				t.Fatalf("block sizes %+v, want %+v", info, want)
			}
			if !tc.opts.BlockSize && info.MinBlock != 0 {
				t.Fatalf("block sizes sent without being asked: %+v", info)
			}
			if structured != tc.opts.Structured || n.Structured != tc.opts.Structured || n.BlockSizeAgreed != tc.wantAgreed || n.Via != OptGo {
				t.Fatalf("negotiated %+v (client structured %v)", n, structured)
			}
		})
	}
}

// rawClient is a scripted client: it reads the greeting, sends flags,
// then lets the test drive.
func rawClient(t *testing.T, c net.Conn, flags uint32) {
	t.Helper()
	var g [GreetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		t.Fatal(err)
	}
	if f, err := ParseGreeting(g[:]); err != nil || f != FlagFixedNewstyle|FlagNoZeroes {
		t.Fatalf("greeting flags %#x, %v", f, err)
	}
	c.Write(binary.BigEndian.AppendUint32(nil, flags))
}

func TestNegotiateListInfoAbort(t *testing.T) {
	var names []string
	var infoTypes []ReplyType
	var abortAck ReplyType
	_, err := negotiate(t, func(c net.Conn) {
		rawClient(t, c, ClientFixedNewstyle|ClientNoZeroes)
		c.Write(AppendOption(nil, OptList, nil))
		for {
			h, d, err := readOptionReply(c)
			if err != nil {
				t.Error(err)
				return
			}
			if h.Type == RepAck {
				break
			}
			n := binary.BigEndian.Uint32(d)
			names = append(names, string(d[4:4+n]))
		}
		// LIST with data, STARTTLS, an unknown option: errors, negotiation goes on.
		// (net.Pipe is unbuffered: write while the replies are read)
		var opts []byte
		opts = AppendOption(opts, OptList, []byte{1})
		opts = AppendOption(opts, OptStartTLS, nil)
		opts = AppendOption(opts, 99, []byte("xyz"))
		opts = AppendOption(opts, OptInfo, []byte{0, 0})
		opts = AppendOption(opts, OptInfo, AppendInfoRequest(nil, InfoRequest{Name: "disk"}))
		wrote := make(chan struct{})
		go func() { defer close(wrote); c.Write(opts) }()
		defer func() { <-wrote }()
		for range 6 {
			h, _, err := readOptionReply(c)
			if err != nil {
				t.Error(err)
				return
			}
			infoTypes = append(infoTypes, h.Type)
		}
		c.Write(AppendOption(nil, OptAbort, nil))
		h, _, err := readOptionReply(c)
		if err != nil {
			t.Error(err)
			return
		}
		abortAck = h.Type
	})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("server: %v, want ErrAborted", err)
	}
	if strings.Join(names, ",") != "disk,ro" {
		t.Fatalf("LIST gave %q", names)
	}
	want := []ReplyType{RepErrInvalid, RepErrUnsup, RepErrUnsup, RepErrInvalid, RepInfo, RepAck}
	for i := range want {
		if infoTypes[i] != want[i] {
			t.Fatalf("replies %#x, want %#x", infoTypes, want)
		}
	}
	if abortAck != RepAck {
		t.Fatalf("ABORT answered %#x", abortAck)
	}
}

func TestNegotiateExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		var reply []byte
		flags := ClientFixedNewstyle
		if noZeroes {
			flags |= ClientNoZeroes
		}
		n, err := negotiate(t, func(c net.Conn) {
			rawClient(t, c, flags)
			c.Write(AppendOption(nil, OptExportName, []byte("disk")))
			reply, _ = io.ReadAll(c)
		})
		if err != nil {
			t.Fatal(err)
		}
		wantLen := 10 + ExportNameReplyZeroes
		if noZeroes {
			wantLen = 10
		}
		if len(reply) != wantLen || binary.BigEndian.Uint64(reply) != 1<<20 ||
			TransmissionFlags(binary.BigEndian.Uint16(reply[8:])) != FlagSendFlush|FlagHasFlags {
			t.Fatalf("no_zeroes=%v: reply %x", noZeroes, reply)
		}
		if n.Via != OptExportName || n.BlockSizeAgreed {
			t.Fatalf("negotiated %+v", n)
		}
	}
	// Unknown export: the connection is closed without a reply.
	var reply []byte
	_, err := negotiate(t, func(c net.Conn) {
		rawClient(t, c, ClientFixedNewstyle)
		c.Write(AppendOption(nil, OptExportName, []byte("nope")))
		reply, _ = io.ReadAll(c)
	})
	if !errors.Is(err, ErrUnknownExport) || len(reply) != 0 {
		t.Fatalf("unknown export: %v, reply %x", err, reply)
	}
}

func TestNegotiateViolations(t *testing.T) {
	for _, tc := range []struct {
		name   string
		flags  uint32
		script []byte
	}{
		{"unknown client flag", 1 << 5, nil},
		{"bad option magic", ClientFixedNewstyle, append([]byte("IHAVEOPX"), 0, 0, 0, 7, 0, 0, 0, 0)},
		{"option too long", ClientFixedNewstyle, AppendOption(nil, OptGo, nil)[:12]},
		{"unknown option, not fixed", 0, AppendOption(nil, 99, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := negotiate(t, func(c net.Conn) {
				rawClient(t, c, tc.flags)
				s := tc.script
				if tc.name == "option too long" {
					s = binary.BigEndian.AppendUint32(s, MaxOptionLen+1)
				}
				wrote := make(chan struct{})
				go func() { defer close(wrote); c.Write(s) }() // the server may stop reading
				io.Copy(io.Discard, c)
				c.Close() // ends a blocked Write
				<-wrote
			})
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("server: %v, want a protocol error", err)
			}
		})
	}
}

func TestNegotiateTooManyOptions(t *testing.T) {
	_, err := negotiate(t, func(c net.Conn) {
		rawClient(t, c, ClientFixedNewstyle)
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			for range MaxOptions + 1 {
				if _, err := c.Write(AppendOption(nil, OptStructuredReply, nil)); err != nil {
					return
				}
			}
		}()
		io.Copy(io.Discard, c)
		c.Close() // ends a blocked Write
		<-wrote
	})
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("server: %v, want a protocol error", err)
	}
}

// Fuzz targets: every decoder, on any input, returns or errors; never
// panics; and what decodes re-encodes to the same bytes.

func FuzzParseRequest(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Type: CmdWrite, Length: 4096, Cookie: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err == nil && !bytes.Equal(AppendRequest(nil, r), b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzParseOptionHeader(f *testing.F) {
	f.Add(AppendOption(nil, OptGo, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseOptionHeader(b)
		if err == nil && (h.Length > MaxOptionLen || !bytes.Equal(AppendOption(nil, h.Option, nil)[:12], b[:12])) {
			t.Fatalf("bad header accepted: %+v", h)
		}
	})
}

func FuzzParseInfoRequest(f *testing.F) {
	f.Add(AppendInfoRequest(nil, InfoRequest{Name: "disk", Infos: []InfoType{InfoBlockSize}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseInfoRequest(b)
		if err == nil && !bytes.Equal(AppendInfoRequest(nil, r), b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzParseReply(f *testing.F) {
	f.Add(AppendSimpleReply(nil, EIO, 1))
	f.Add(AppendErrorChunk(nil, 1, EIO, "x"))
	f.Add(AppendDataChunk(nil, 1, 0, 4))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := ParseReply(b)
		if err != nil {
			return
		}
		if n > len(b) || (r.Structured && r.Length > 8+MaxPayload) {
			t.Fatalf("bad reply accepted: %+v %d", r, n)
		}
		if r.Structured && r.Type == ChunkError && int(r.Length) <= len(b)-n {
			ParseErrorChunk(b[n : n+int(r.Length)])
		}
	})
}

func FuzzParseOptionReply(f *testing.F) {
	f.Add(AppendInfoBlockSize(nil, OptGo, 512, 4096, 1<<20))
	f.Add(AppendInfoExport(nil, OptInfo, 1<<30, FlagHasFlags))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < OptionReplyHeaderLen {
			return
		}
		h, err := ParseOptionReplyHeader(b[:OptionReplyHeaderLen])
		if err != nil {
			return
		}
		if rest := b[OptionReplyHeaderLen:]; h.Type == RepInfo && int(h.Length) <= len(rest) {
			ParseInfo(rest[:h.Length])
		}
		ParseGreeting(b[:min(len(b), GreetingLen)])
		ParseClientFlags(b[:4])
		ParseExportName(b)
	})
}

// FuzzNegotiate runs the server's negotiation on any client byte stream:
// it must end (error or success) without panicking or hanging.
func FuzzNegotiate(f *testing.F) {
	seed := binary.BigEndian.AppendUint32(nil, ClientFixedNewstyle)
	seed = AppendOption(seed, OptStructuredReply, nil)
	seed = AppendOption(seed, OptList, nil)
	seed = AppendOption(seed, OptGo, AppendInfoRequest(nil, InfoRequest{Name: "disk", Infos: []InfoType{InfoBlockSize}}))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, in []byte) {
		rw := &scripted{in: bytes.NewReader(in)}
		n, err := Negotiate(rw, testHandler{})
		if err == nil && n.Export.Name == "" {
			t.Fatalf("success without an export")
		}
	})
}

type scripted struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (s *scripted) Read(p []byte) (int, error)  { return s.in.Read(p) }
func (s *scripted) Write(p []byte) (int, error) { return s.out.Write(p) }
