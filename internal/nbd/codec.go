package nbd

import "unicode/utf8"

// AppendGreeting appends the server's fixed newstyle greeting: NBDMAGIC,
// IHAVEOPT and the handshake flags.
func AppendGreeting(b []byte, flags uint16) []byte {
	b = be.AppendUint64(b, NBDMagic)
	b = be.AppendUint64(b, OptMagic)
	return be.AppendUint16(b, flags)
}

// ParseGreeting reads a newstyle greeting (GreetingLen bytes) and returns
// its handshake flags.
func ParseGreeting(b []byte) (uint16, error) {
	if len(b) != GreetingLen {
		return 0, perr("greeting", "%d bytes, want %d", len(b), GreetingLen)
	}
	if m := be.Uint64(b); m != NBDMagic {
		return 0, perr("greeting", "magic %#x is not NBDMAGIC", m)
	}
	if m := be.Uint64(b[8:]); m != OptMagic {
		return 0, perr("greeting", "magic %#x is not IHAVEOPT (not a newstyle server)", m)
	}
	return be.Uint16(b[16:]), nil
}

// ParseClientFlags reads the client's 32-bit flags. Unknown bits are a
// protocol error: the spec says the server must then close.
func ParseClientFlags(b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, perr("client flags", "%d bytes, want 4", len(b))
	}
	f := be.Uint32(b)
	if f&^knownClientFlags != 0 {
		return 0, perr("client flags", "unknown bits %#x", f&^knownClientFlags)
	}
	return f, nil
}

// OptionHeader is the fixed part of an option request.
type OptionHeader struct {
	Option Option
	Length uint32 // bytes of data that follow
}

// ParseOptionHeader reads an option request header (OptionHeaderLen
// bytes). A length above MaxOptionLen is an error: the option's data
// would have to be read to go on.
func ParseOptionHeader(b []byte) (OptionHeader, error) {
	if len(b) != OptionHeaderLen {
		return OptionHeader{}, perr("option", "%d bytes, want %d", len(b), OptionHeaderLen)
	}
	if m := be.Uint64(b); m != OptMagic {
		return OptionHeader{}, perr("option", "magic %#x is not IHAVEOPT", m)
	}
	h := OptionHeader{Option: Option(be.Uint32(b[8:])), Length: be.Uint32(b[12:])}
	if h.Length > MaxOptionLen {
		return h, perr("option "+h.Option.String(), "length %d exceeds %d", h.Length, MaxOptionLen)
	}
	return h, nil
}

// AppendOption appends an option request (client side).
func AppendOption(b []byte, o Option, data []byte) []byte {
	b = be.AppendUint64(b, OptMagic)
	b = be.AppendUint32(b, uint32(o))
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// AppendOptionReply appends an option reply with its data.
func AppendOptionReply(b []byte, o Option, t ReplyType, data []byte) []byte {
	b = be.AppendUint64(b, RepMagic)
	b = be.AppendUint32(b, uint32(o))
	b = be.AppendUint32(b, uint32(t))
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// AppendOptionError appends an error reply carrying msg (truncated to
// MaxStringLen) as its human-readable data.
func AppendOptionError(b []byte, o Option, t ReplyType, msg string) []byte {
	return AppendOptionReply(b, o, t, []byte(clip(msg)))
}

// OptionReplyHeader is the fixed part of an option reply.
type OptionReplyHeader struct {
	Option Option
	Type   ReplyType
	Length uint32
}

// ParseOptionReplyHeader reads an option reply header
// (OptionReplyHeaderLen bytes; client side), bounding its length by
// MaxOptionLen.
func ParseOptionReplyHeader(b []byte) (OptionReplyHeader, error) {
	if len(b) != OptionReplyHeaderLen {
		return OptionReplyHeader{}, perr("option reply", "%d bytes, want %d", len(b), OptionReplyHeaderLen)
	}
	if m := be.Uint64(b); m != RepMagic {
		return OptionReplyHeader{}, perr("option reply", "magic %#x", m)
	}
	h := OptionReplyHeader{Option: Option(be.Uint32(b[8:])), Type: ReplyType(be.Uint32(b[12:])), Length: be.Uint32(b[16:])}
	if h.Length > MaxOptionLen {
		return h, perr("option reply", "length %d exceeds %d", h.Length, MaxOptionLen)
	}
	return h, nil
}

// AppendServerReply appends an NBD_REP_SERVER reply (one export of a
// LIST): the name's length, the name, then the description.
func AppendServerReply(b []byte, name, description string) []byte {
	name, description = clip(name), clip(description)
	data := make([]byte, 0, 4+len(name)+len(description))
	data = be.AppendUint32(data, uint32(len(name)))
	data = append(data, name...)
	data = append(data, description...)
	return AppendOptionReply(b, OptList, RepServer, data)
}

// AppendInfoExport appends NBD_REP_INFO with NBD_INFO_EXPORT.
func AppendInfoExport(b []byte, o Option, size uint64, flags TransmissionFlags) []byte {
	var d [12]byte
	be.PutUint16(d[0:], uint16(InfoExport))
	be.PutUint64(d[2:], size)
	be.PutUint16(d[10:], uint16(flags))
	return AppendOptionReply(b, o, RepInfo, d[:])
}

// AppendInfoBlockSize appends NBD_REP_INFO with NBD_INFO_BLOCK_SIZE.
func AppendInfoBlockSize(b []byte, o Option, min, preferred, max uint32) []byte {
	var d [14]byte
	be.PutUint16(d[0:], uint16(InfoBlockSize))
	be.PutUint32(d[2:], min)
	be.PutUint32(d[6:], preferred)
	be.PutUint32(d[10:], max)
	return AppendOptionReply(b, o, RepInfo, d[:])
}

// AppendInfoString appends NBD_REP_INFO with NBD_INFO_NAME or
// NBD_INFO_DESCRIPTION.
func AppendInfoString(b []byte, o Option, t InfoType, s string) []byte {
	s = clip(s)
	d := make([]byte, 2, 2+len(s))
	be.PutUint16(d, uint16(t))
	return AppendOptionReply(b, o, RepInfo, append(d, s...))
}

// Info is one NBD_REP_INFO reply, decoded (client side and tests).
type Info struct {
	Type                     InfoType
	Size                     uint64            // InfoExport
	Flags                    TransmissionFlags // InfoExport
	MinBlock, PrefBlock, Max uint32            // InfoBlockSize
	Text                     string            // InfoName, InfoDescription
}

// ParseInfo decodes the data of an NBD_REP_INFO reply. Unknown types
// are returned with only Type set (a client ignores them).
func ParseInfo(d []byte) (Info, error) {
	if len(d) < 2 {
		return Info{}, perr("info", "%d bytes, want at least 2", len(d))
	}
	in := Info{Type: InfoType(be.Uint16(d))}
	d = d[2:]
	switch in.Type {
	case InfoExport:
		if len(d) != 10 {
			return in, perr("info export", "%d bytes, want 10", len(d))
		}
		in.Size, in.Flags = be.Uint64(d), TransmissionFlags(be.Uint16(d[8:]))
	case InfoBlockSize:
		if len(d) != 12 {
			return in, perr("info block size", "%d bytes, want 12", len(d))
		}
		in.MinBlock, in.PrefBlock, in.Max = be.Uint32(d), be.Uint32(d[4:]), be.Uint32(d[8:])
	case InfoName, InfoDescription:
		if len(d) > MaxStringLen {
			return in, perr("info string", "%d bytes exceed %d", len(d), MaxStringLen)
		}
		in.Text = string(d)
	}
	return in, nil
}

// InfoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type InfoRequest struct {
	Name  string
	Infos []InfoType
}

// Wants reports whether the request asks for information type t.
func (r *InfoRequest) Wants(t InfoType) bool {
	for _, x := range r.Infos {
		if x == t {
			return true
		}
	}
	return false
}

// ParseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO: a
// 32-bit name length, the name (at most MaxStringLen bytes of UTF-8
// without NUL), a 16-bit count and that many 16-bit information types.
// The fields must fill the data exactly.
func ParseInfoRequest(d []byte) (InfoRequest, error) {
	var r InfoRequest
	if len(d) < 6 {
		return r, perr("info request", "%d bytes, want at least 6", len(d))
	}
	n := be.Uint32(d)
	if n > MaxStringLen || uint64(n)+6 > uint64(len(d)) {
		return r, perr("info request", "name length %d does not fit %d bytes", n, len(d))
	}
	name := d[4 : 4+n]
	if err := checkString("export name", name); err != nil {
		return r, err
	}
	d = d[4+n:]
	cnt := int(be.Uint16(d))
	d = d[2:]
	if len(d) != 2*cnt {
		return r, perr("info request", "%d information requests in %d bytes", cnt, len(d))
	}
	r.Name = string(name)
	if cnt > 0 {
		r.Infos = make([]InfoType, cnt)
		for i := range r.Infos {
			r.Infos[i] = InfoType(be.Uint16(d[2*i:]))
		}
	}
	return r, nil
}

// AppendInfoRequest appends the data of an INFO or GO option.
func AppendInfoRequest(b []byte, r InfoRequest) []byte {
	b = be.AppendUint32(b, uint32(len(r.Name)))
	b = append(b, r.Name...)
	b = be.AppendUint16(b, uint16(len(r.Infos)))
	for _, t := range r.Infos {
		b = be.AppendUint16(b, uint16(t))
	}
	return b
}

// ParseExportName checks the data of NBD_OPT_EXPORT_NAME (the name
// itself).
func ParseExportName(d []byte) (string, error) {
	if len(d) > MaxStringLen {
		return "", perr("export name", "%d bytes exceed %d", len(d), MaxStringLen)
	}
	if err := checkString("export name", d); err != nil {
		return "", err
	}
	return string(d), nil
}

// AppendExportNameReply appends the reply to NBD_OPT_EXPORT_NAME: size,
// transmission flags and, unless the client set NO_ZEROES, 124 zeroes.
func AppendExportNameReply(b []byte, size uint64, flags TransmissionFlags, noZeroes bool) []byte {
	b = be.AppendUint64(b, size)
	b = be.AppendUint16(b, uint16(flags))
	if !noZeroes {
		b = append(b, make([]byte, ExportNameReplyZeroes)...)
	}
	return b
}

func checkString(what string, s []byte) error {
	if !utf8.Valid(s) {
		return perr(what, "not UTF-8")
	}
	for _, c := range s {
		if c == 0 {
			return perr(what, "contains NUL")
		}
	}
	return nil
}

// clip truncates s to MaxStringLen bytes at a rune boundary.
func clip(s string) string {
	if len(s) <= MaxStringLen {
		return s
	}
	s = s[:MaxStringLen]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// Request is a transmission request (compact header).
type Request struct {
	Flags  CmdFlags
	Type   Cmd
	Cookie uint64
	Offset uint64
	Length uint32
}

// ParseRequest reads a request header (RequestLen bytes). It checks only
// the magic: what the command, flags and range mean is the server's
// business (most mistakes there get an error reply, not a closed
// connection).
func ParseRequest(b []byte) (Request, error) {
	if len(b) != RequestLen {
		return Request{}, perr("request", "%d bytes, want %d", len(b), RequestLen)
	}
	if m := be.Uint32(b); m != RequestMagic {
		return Request{}, perr("request", "magic %#x", m)
	}
	return Request{
		Flags:  CmdFlags(be.Uint16(b[4:])),
		Type:   Cmd(be.Uint16(b[6:])),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint32(b[24:]),
	}, nil
}

// AppendRequest appends a request header (client side).
func AppendRequest(b []byte, r Request) []byte {
	b = be.AppendUint32(b, RequestMagic)
	b = be.AppendUint16(b, uint16(r.Flags))
	b = be.AppendUint16(b, uint16(r.Type))
	b = be.AppendUint64(b, r.Cookie)
	b = be.AppendUint64(b, r.Offset)
	return be.AppendUint32(b, r.Length)
}

// AppendSimpleReply appends a simple reply header; a successful READ's
// data follows it.
func AppendSimpleReply(b []byte, errno Errno, cookie uint64) []byte {
	b = be.AppendUint32(b, SimpleReplyMagic)
	b = be.AppendUint32(b, uint32(errno))
	return be.AppendUint64(b, cookie)
}

// AppendChunkHeader appends a structured reply chunk header.
func AppendChunkHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) []byte {
	b = be.AppendUint32(b, StructuredReplyMagic)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, cookie)
	return be.AppendUint32(b, length)
}

// AppendDataChunk appends the header of a final NBD_REPLY_TYPE_OFFSET_DATA
// chunk carrying n bytes read at offset; the n bytes follow it.
func AppendDataChunk(b []byte, cookie, offset uint64, n uint32) []byte {
	b = AppendChunkHeader(b, ChunkFlagDone, ChunkOffsetData, cookie, 8+n)
	return be.AppendUint64(b, offset)
}

// AppendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk: the error
// and a message (clipped to MaxStringLen).
func AppendErrorChunk(b []byte, cookie uint64, errno Errno, msg string) []byte {
	msg = clip(msg)
	b = AppendChunkHeader(b, ChunkFlagDone, ChunkError, cookie, uint32(6+len(msg)))
	b = be.AppendUint32(b, uint32(errno))
	b = be.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// Reply is a reply header, decoded (client side and tests). For a simple
// reply Structured is false and Errno is set; for a chunk, Flags, Type
// and Length are.
type Reply struct {
	Structured bool
	Errno      Errno
	Cookie     uint64
	Flags      uint16
	Type       uint16
	Length     uint32
}

// ParseReply reads a reply header: a simple reply (its first
// SimpleReplyLen bytes) or a structured chunk header (StructuredReplyLen
// bytes); b must hold at least the header its magic announces. It
// returns the header and its length. A chunk longer than 8+MaxPayload
// is an error.
func ParseReply(b []byte) (Reply, int, error) {
	if len(b) < 4 {
		return Reply{}, 0, perr("reply", "%d bytes, want at least 4", len(b))
	}
	switch m := be.Uint32(b); m {
	case SimpleReplyMagic:
		if len(b) < SimpleReplyLen {
			return Reply{}, 0, perr("simple reply", "%d bytes, want %d", len(b), SimpleReplyLen)
		}
		return Reply{Errno: Errno(be.Uint32(b[4:])), Cookie: be.Uint64(b[8:])}, SimpleReplyLen, nil
	case StructuredReplyMagic:
		if len(b) < StructuredReplyLen {
			return Reply{}, 0, perr("structured reply", "%d bytes, want %d", len(b), StructuredReplyLen)
		}
		r := Reply{Structured: true, Flags: be.Uint16(b[4:]), Type: be.Uint16(b[6:]), Cookie: be.Uint64(b[8:]), Length: be.Uint32(b[16:])}
		if r.Length > 8+MaxPayload {
			return r, 0, perr("structured reply", "chunk length %d exceeds %d", r.Length, 8+MaxPayload)
		}
		return r, StructuredReplyLen, nil
	default:
		return Reply{}, 0, perr("reply", "magic %#x", m)
	}
}

// ParseErrorChunk decodes the payload of an ERROR chunk.
func ParseErrorChunk(d []byte) (Errno, string, error) {
	if len(d) < 6 {
		return 0, "", perr("error chunk", "%d bytes, want at least 6", len(d))
	}
	e := Errno(be.Uint32(d))
	n := int(be.Uint16(d[4:]))
	if n != len(d)-6 {
		return e, "", perr("error chunk", "message length %d in %d bytes", n, len(d)-6)
	}
	if e == 0 {
		return e, "", perr("error chunk", "error value 0")
	}
	return e, string(d[6:]), nil
}
