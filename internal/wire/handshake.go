package wire

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MsgType is the type byte of a handshake message.
type MsgType uint8

// Handshake message types (PROTOCOL.md §2).
const (
	MsgHello   MsgType = 1
	MsgWelcome MsgType = 2
	MsgRefuse  MsgType = 3
)

func (t MsgType) String() string {
	switch t {
	case MsgHello:
		return "HELLO"
	case MsgWelcome:
		return "WELCOME"
	case MsgRefuse:
		return "REFUSE"
	}
	return "MsgType(" + strconv.Itoa(int(t)) + ")"
}

// Features is a set of feature bits (PROTOCOL.md §2.4).
type Features uint64

// Feature bits.
const (
	FeatFlush       Features = 1 << 0
	FeatFUA         Features = 1 << 1
	FeatDiscard     Features = 1 << 2
	FeatWriteZeroes Features = 1 << 3
	FeatResume      Features = 1 << 4

	// KnownFeatures is every feature bit version 1 defines.
	KnownFeatures = FeatFlush | FeatFUA | FeatDiscard | FeatWriteZeroes | FeatResume
)

// String lists the feature names separated by "|"
// ("FLUSH|FUA|DISCARD|WRITE_ZEROES|RESUME"), unknown bits as one hex
// number, or "none".
func (f Features) String() string {
	return bitString(uint64(f), []string{"FLUSH", "FUA", "DISCARD", "WRITE_ZEROES", "RESUME"}, "none")
}

// RefuseCode is the code of a REFUSE (PROTOCOL.md §2.3).
type RefuseCode uint16

// Refusal codes.
const (
	RefuseMalformed    RefuseCode = 1 // the HELLO could not be parsed
	RefuseVersion      RefuseCode = 2 // no common protocol version
	RefuseNoSuchExport RefuseCode = 3 // the export name is not exported
	RefuseAccessDenied RefuseCode = 4 // the client is not on the access list
	RefuseUnsupported  RefuseCode = 5 // unknown critical attribute or required feature
	RefuseBusy         RefuseCode = 6 // shutting down or at the connection limit
)

// String returns the protocol name ("NO_SUCH_EXPORT"), or "RefuseCode(n)".
func (c RefuseCode) String() string {
	switch c {
	case RefuseMalformed:
		return "MALFORMED"
	case RefuseVersion:
		return "VERSION"
	case RefuseNoSuchExport:
		return "NO_SUCH_EXPORT"
	case RefuseAccessDenied:
		return "ACCESS_DENIED"
	case RefuseUnsupported:
		return "UNSUPPORTED"
	case RefuseBusy:
		return "BUSY"
	}
	return "RefuseCode(" + strconv.Itoa(int(c)) + ")"
}

// Token is a session token.
type Token [16]byte

// NewToken returns a token of 128 bits from crypto/rand. Tokens are bearer
// credentials for resuming a session: they must not be guessable.
func NewToken() Token {
	var t Token
	_, _ = rand.Read(t[:]) // never fails (Go ≥ 1.24 crashes instead)
	return t
}

// IsZero reports whether t is all zeros.
func (t Token) IsZero() bool { return t == Token{} }

// String returns the first 4 bytes in hex followed by "…": enough to tell
// sessions apart in logs without writing the credential to them.
func (t Token) String() string { return hex.EncodeToString(t[:4]) + "…" }

// Attribute types. The high bit (AttrCritical) marks an attribute that a
// receiver must understand. Attribute types are scoped by message type.
const (
	AttrCritical uint16 = 0x8000

	// HELLO (§2.1)
	AttrHelloExportName  uint16 = 0x8001 // string, required
	AttrHelloFeatures    uint16 = 0x0002 // u64 CLIENT_FEATURES, required
	AttrHelloSession     uint16 = 0x0003 // 16 bytes
	AttrHelloWantRO      uint16 = 0x0004 // bool WANT_READ_ONLY
	AttrHelloClientName  uint16 = 0x0005 // string
	AttrHelloMaxInflight uint16 = 0x0006 // u32
	AttrHelloTagSize     uint16 = 0x0007 // u8
	AttrHelloCrypto      uint16 = 0x8008 // CRYPTO (PROTOCOL.md §8.2), critical; value checked by package crypto

	// WELCOME (§2.2)
	AttrWelcomeSession            uint16 = 0x0101 // 16 bytes, required
	AttrWelcomeResumed            uint16 = 0x0102 // bool
	AttrWelcomeExportSize         uint16 = 0x0103 // u64, required
	AttrWelcomeLogicalBlock       uint16 = 0x0104 // u32, required
	AttrWelcomePhysicalBlock      uint16 = 0x0105 // u32
	AttrWelcomeMaxTransfer        uint16 = 0x0106 // u32, required
	AttrWelcomeReadOnly           uint16 = 0x0107 // bool
	AttrWelcomeFeatures           uint16 = 0x0108 // u64 SERVER_FEATURES, required
	AttrWelcomeMaxInflight        uint16 = 0x0109 // u32, required
	AttrWelcomeDiscardGranularity uint16 = 0x010A // u32
	AttrWelcomeTagSize            uint16 = 0x010B // u8
	AttrWelcomeExporterName       uint16 = 0x010C // string
	AttrWelcomeCrypto             uint16 = 0x810D // CRYPTO (PROTOCOL.md §8.2), critical; value checked by package crypto

	// REFUSE (§2.3)
	AttrRefuseCode   uint16 = 0x0201 // u16, required
	AttrRefuseReason uint16 = 0x0202 // string
)

// ErrHandshake is matched (errors.Is) by every *HandshakeError.
var ErrHandshake = errors.New("wire: handshake error")

// HandshakeError is a handshake message that breaks the rules of
// PROTOCOL.md §2. On the exporter side, Code is the REFUSE code to answer
// with (MALFORMED, or UNSUPPORTED for an unknown critical attribute) and
// Reason a sentence for the REFUSE; see Refuse. On the client side the
// connect attempt fails with it.
type HandshakeError struct {
	Code   RefuseCode
	Reason string
}

func (e *HandshakeError) Error() string {
	return "wire: bad handshake: " + e.Reason + " (" + e.Code.String() + ")"
}

// Is makes errors.Is(err, ErrHandshake) true.
func (e *HandshakeError) Is(target error) bool { return target == ErrHandshake }

// Refuse returns the REFUSE an exporter sends for e.
func (e *HandshakeError) Refuse() *Refuse {
	return &Refuse{Version: Version, Code: e.Code, Reason: e.Reason}
}

func malformed(format string, args ...any) *HandshakeError {
	return &HandshakeError{Code: RefuseMalformed, Reason: fmt.Sprintf(format, args...)}
}

// RefuseError is what a client returns when the exporter refused it.
type RefuseError struct {
	Version uint16 // the version in the REFUSE header
	Code    RefuseCode
	Reason  string
}

// Error returns "exporter refused: <reason> (<code name>)". Characters of
// the reason that are not printable are replaced by U+FFFD, so that an
// exporter cannot send terminal escapes to the user.
func (e *RefuseError) Error() string {
	reason := e.Reason
	if reason == "" {
		reason = "no reason given"
	}
	reason = strings.Map(func(r rune) rune {
		if r == ' ' || unicode.IsPrint(r) {
			return r
		}
		return utf8.RuneError
	}, reason)
	return "exporter refused: " + reason + " (" + e.Code.String() + ")"
}

// Retryable reports whether the refusal is temporary (BUSY) and the client
// may try again later.
func (e *RefuseError) Retryable() bool { return e.Code == RefuseBusy }

// NegotiateVersion returns the version an exporter speaking this package's
// Version answers to a HELLO with version client (min of the two), and false
// if there is none (client is 0): then it must REFUSE with RefuseVersion.
func NegotiateVersion(client uint16) (uint16, bool) {
	if client == 0 {
		return 0, false
	}
	return min(client, Version), true
}

// ---- attributes ----

// Attr is one handshake attribute: type u16 | length u16 | value.
type Attr struct {
	Type  uint16
	Value []byte
}

// Critical reports whether the attribute's critical bit (0x8000) is set.
func (a Attr) Critical() bool { return a.Type&AttrCritical != 0 }

// attrSet is a set of attribute types (8 KiB), used to find duplicates
// without allocating.
type attrSet [65536 / 64]uint64

// add adds t and reports whether it was already there.
func (s *attrSet) add(t uint16) bool {
	w, m := t/64, uint64(1)<<(t%64)
	had := s[w]&m != 0
	s[w] |= m
	return had
}

// checkAttrs checks the structure of a handshake body: at most
// MaxHandshakeBody bytes, consumed exactly by attributes whose values are
// at most MaxAttrLen bytes, none truncated, no type twice. It returns the
// number of attributes. It does not allocate.
func checkAttrs(body []byte) (int, error) {
	if len(body) > MaxHandshakeBody {
		return 0, malformed("body is %d bytes, limit %d", len(body), MaxHandshakeBody)
	}
	var seen attrSet
	n := 0
	for p := body; len(p) > 0; n++ {
		if len(p) < 4 {
			return 0, malformed("attribute header truncated: %d bytes left in the body", len(p))
		}
		t := binary.LittleEndian.Uint16(p[0:2])
		l := int(binary.LittleEndian.Uint16(p[2:4]))
		if l > MaxAttrLen {
			return 0, malformed("attribute %#04x has length %d, limit %d", t, l, MaxAttrLen)
		}
		if l > len(p)-4 {
			return 0, malformed("attribute %#04x truncated: length %d, %d bytes left in the body", t, l, len(p)-4)
		}
		if seen.add(t) {
			return 0, malformed("attribute %#04x appears twice", t)
		}
		p = p[4+l:]
	}
	return n, nil
}

// nextAttr splits the first attribute off a body that checkAttrs accepted.
func nextAttr(p []byte) (Attr, []byte) {
	t := binary.LittleEndian.Uint16(p[0:2])
	l := int(binary.LittleEndian.Uint16(p[2:4]))
	return Attr{Type: t, Value: p[4 : 4+l : 4+l]}, p[4+l:]
}

// ParseAttrs splits a handshake body into attributes, enforcing the rules of
// PROTOCOL.md §2: body at most MaxHandshakeBody bytes and exactly consumed,
// values at most MaxAttrLen bytes, no truncated attribute, no type twice.
// The values alias body. Errors are *HandshakeError with Code MALFORMED.
// ParseAttrs does not look at the types: critical and unknown attributes
// are the caller's business.
func ParseAttrs(body []byte) ([]Attr, error) {
	n, err := checkAttrs(body)
	if err != nil {
		return nil, err
	}
	attrs := make([]Attr, 0, n)
	for p := body; len(p) > 0; {
		var a Attr
		a, p = nextAttr(p)
		attrs = append(attrs, a)
	}
	return attrs, nil
}

// AppendAttrs appends the encoding of attrs, in order, to b. It fails if a
// value is longer than MaxAttrLen, a type appears twice, or the encoding
// would be longer than MaxHandshakeBody.
func AppendAttrs(b []byte, attrs []Attr) ([]byte, error) {
	var seen attrSet
	size := 0
	for _, a := range attrs {
		if len(a.Value) > MaxAttrLen {
			return b, fmt.Errorf("wire: attribute %#04x value is %d bytes, limit %d", a.Type, len(a.Value), MaxAttrLen)
		}
		if seen.add(a.Type) {
			return b, fmt.Errorf("wire: attribute %#04x appears twice", a.Type)
		}
		size += 4 + len(a.Value)
	}
	if size > MaxHandshakeBody {
		return b, fmt.Errorf("wire: attributes take %d bytes, limit %d", size, MaxHandshakeBody)
	}
	for _, a := range attrs {
		b = appendAttr(b, a.Type, a.Value)
	}
	return b, nil
}

func appendAttr(b []byte, t uint16, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, t)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

func appendU8(b []byte, t uint16, v uint8) []byte { return appendAttr(b, t, []byte{v}) }

func appendBool(b []byte, t uint16, v bool) []byte {
	if v {
		return appendU8(b, t, 1)
	}
	return appendU8(b, t, 0)
}

func appendU16(b []byte, t uint16, v uint16) []byte {
	return appendAttr(b, t, binary.LittleEndian.AppendUint16(nil, v))
}

func appendU32(b []byte, t uint16, v uint32) []byte {
	return appendAttr(b, t, binary.LittleEndian.AppendUint32(nil, v))
}

func appendU64(b []byte, t uint16, v uint64) []byte {
	return appendAttr(b, t, binary.LittleEndian.AppendUint64(nil, v))
}

func appendString(b []byte, t uint16, v string) []byte { return appendAttr(b, t, []byte(v)) }

// Value decoders: "a value of the wrong size" is malformed.

func wantLen(name string, a Attr, n int) error {
	if len(a.Value) != n {
		return malformed("%s (%#04x) is %d bytes, want %d", name, a.Type, len(a.Value), n)
	}
	return nil
}

func getU8(name string, a Attr) (uint8, error) {
	if err := wantLen(name, a, 1); err != nil {
		return 0, err
	}
	return a.Value[0], nil
}

func getBool(name string, a Attr) (bool, error) {
	v, err := getU8(name, a)
	if err != nil {
		return false, err
	}
	if v > 1 {
		return false, malformed("%s (%#04x) is %d, a boolean must be 0 or 1", name, a.Type, v)
	}
	return v == 1, nil
}

func getU16(name string, a Attr) (uint16, error) {
	if err := wantLen(name, a, 2); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(a.Value), nil
}

func getU32(name string, a Attr) (uint32, error) {
	if err := wantLen(name, a, 4); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(a.Value), nil
}

func getU64(name string, a Attr) (uint64, error) {
	if err := wantLen(name, a, 8); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(a.Value), nil
}

func getToken(name string, a Attr) (Token, error) {
	var t Token
	if err := wantLen(name, a, len(t)); err != nil {
		return t, err
	}
	copy(t[:], a.Value)
	return t, nil
}

func getString(name string, a Attr) (string, error) {
	if err := checkString(name, a.Value); err != nil {
		return "", err
	}
	return string(a.Value), nil
}

// checkString: strings are UTF-8 and at most MaxNameLen bytes (§2).
func checkString[T string | []byte](name string, s T) error {
	if len(s) > MaxNameLen {
		return malformed("%s is %d bytes, limit %d", name, len(s), MaxNameLen)
	}
	if !utf8.Valid([]byte(s)) {
		return malformed("%s is not valid UTF-8", name)
	}
	return nil
}

// ValidExportName checks an export name against §2.1: 1..255 bytes of
// [A-Za-z0-9._-]. It also rejects "." and "..", which the charset allows
// but which are path components (a safer reading; see doc.go). Errors are
// *HandshakeError with Code MALFORMED.
func ValidExportName(name string) error {
	if name == "" {
		return malformed("export name is empty")
	}
	if len(name) > MaxNameLen {
		return malformed("export name is %d bytes, limit %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return malformed("export name %s has byte %#02x at offset %d; allowed are A-Z a-z 0-9 . _ -",
				quoteShort(name), c, i)
		}
	}
	if name == "." || name == ".." {
		return malformed("export name %q is not allowed", name)
	}
	return nil
}

// quoteShort quotes s for an error message, cut to 40 bytes.
func quoteShort(s string) string {
	if len(s) > 40 {
		return strconv.Quote(s[:40]) + "..."
	}
	return strconv.Quote(s)
}

// ---- messages ----

// Hello is the client's HELLO (§2.1).
type Hello struct {
	// Version is the highest version the client speaks. WriteHello sends
	// Version (this package's) when it is 0.
	Version uint16
	// Export is the export name (EXPORT_NAME, required).
	Export string
	// Features the client understands (CLIENT_FEATURES, required).
	Features Features
	// Session is the token of the session to resume; it is sent only when
	// HasSession is true.
	Session    Token
	HasSession bool
	// WantReadOnly asks for a read-only session (sent only when true).
	WantReadOnly bool
	// ClientName is for the exporter's logs (sent only when not empty).
	ClientName string
	// MaxInflight is the number of in-flight transactions the client
	// wants, 1..MaxInflightLimit, or 0 to leave it to the exporter (then
	// the attribute is not sent).
	MaxInflight uint32
	// TagSize is the trailer size the client wants (0 in version 1; sent
	// only when not 0).
	TagSize uint8
	// Crypto is the value of the CRYPTO attribute (PROTOCOL.md §8.2), sent
	// only when not empty. Package crypto encodes and checks it; here it
	// is only bounded by the attribute size.
	Crypto []byte
}

// Validate checks the values of h against §2.1. Errors are
// *HandshakeError with Code MALFORMED.
func (h *Hello) Validate() error {
	if err := ValidExportName(h.Export); err != nil {
		return err
	}
	if err := checkString("client name", h.ClientName); err != nil {
		return err
	}
	if h.MaxInflight > MaxInflightLimit {
		return malformed("max inflight %d exceeds the limit %d", h.MaxInflight, MaxInflightLimit)
	}
	return nil
}

// Welcome is the exporter's WELCOME (§2.2).
type Welcome struct {
	// Version is the version chosen. WriteWelcome sends Version (this
	// package's) when it is 0.
	Version uint16
	// Session is the session token, new or resumed (required).
	Session Token
	// Resumed is true if the HELLO's session was found and resumed.
	Resumed bool
	// Size of the export in bytes, a multiple of LogicalBlock (required).
	Size uint64
	// LogicalBlock is a power of two, 512..65536 (required).
	LogicalBlock uint32
	// PhysicalBlock is a power of two ≥ LogicalBlock. ReadWelcome sets it to
	// LogicalBlock when the attribute is absent; WriteWelcome sends
	// LogicalBlock when it is 0.
	PhysicalBlock uint32
	// MaxTransfer is the largest READ/WRITE payload: a multiple of
	// LogicalBlock, at most MaxTransferLimit (required).
	MaxTransfer uint32
	// ReadOnly is true if the session may not write.
	ReadOnly bool
	// Features in effect (SERVER_FEATURES, required). It must be a subset
	// of what the client sent; the client checks that, not ReadWelcome.
	Features Features
	// MaxInflight is the most transactions the client may have
	// outstanding, 1..MaxInflightLimit (required).
	MaxInflight uint32
	// DiscardGranularity in bytes, a multiple of LogicalBlock, or 0 for
	// none. When FeatDiscard is in Features and it is 0, WriteWelcome sends
	// LogicalBlock and ReadWelcome, reading no attribute, sets LogicalBlock.
	DiscardGranularity uint32
	// TagSize is the trailer size in effect (0 in version 1). ReadWelcome
	// does not compare it with the HELLO: the client must.
	TagSize uint8
	// ExporterName is for the client's logs (sent only when not empty).
	ExporterName string
	// Crypto is the value of the CRYPTO attribute (PROTOCOL.md §8.2), sent
	// only when not empty; package crypto encodes and checks it.
	Crypto []byte
}

// Validate checks the values of w against §2.2 and §6. Errors are
// *HandshakeError with Code MALFORMED.
func (w *Welcome) Validate() error {
	lb := w.LogicalBlock
	if lb < 512 || lb > 65536 || bits.OnesCount32(lb) != 1 {
		return malformed("logical block %d is not a power of two in 512..65536", lb)
	}
	if pb := w.PhysicalBlock; pb != 0 && (pb < lb || bits.OnesCount32(pb) != 1) {
		return malformed("physical block %d is not a power of two ≥ the logical block %d", pb, lb)
	}
	if w.Size%uint64(lb) != 0 {
		return malformed("export size %d is not a multiple of the logical block %d", w.Size, lb)
	}
	// Not in PROTOCOL.md: offsets are handled as int64 (off_t) by Go and
	// by Linux; a larger export cannot be addressed.
	if w.Size > math.MaxInt64 {
		return malformed("export size %d exceeds 2^63-1", w.Size)
	}
	if w.MaxTransfer < lb || w.MaxTransfer%lb != 0 || w.MaxTransfer > MaxTransferLimit {
		return malformed("max transfer %d is not a multiple of the logical block %d in %d..%d",
			w.MaxTransfer, lb, lb, MaxTransferLimit)
	}
	if w.MaxInflight < 1 || w.MaxInflight > MaxInflightLimit {
		return malformed("max inflight %d is not in 1..%d", w.MaxInflight, MaxInflightLimit)
	}
	if w.DiscardGranularity%lb != 0 {
		return malformed("discard granularity %d is not a multiple of the logical block %d", w.DiscardGranularity, lb)
	}
	if err := checkString("exporter name", w.ExporterName); err != nil {
		return err
	}
	return nil
}

// Refuse is the exporter's REFUSE (§2.3).
type Refuse struct {
	// Version: for a VERSION refusal, the highest version the exporter
	// speaks (the REASON says so too). WriteRefuse sends Version (this
	// package's) when it is 0.
	Version uint16
	// Code must not be 0.
	Code RefuseCode
	// Reason is a sentence for the user. WriteRefuse replaces invalid
	// UTF-8 and cuts it to MaxNameLen bytes, so that a refusal is always
	// sent.
	Reason string
}

// Err returns the error a client reports for r.
func (r *Refuse) Err() *RefuseError {
	return &RefuseError{Version: r.Version, Code: r.Code, Reason: r.Reason}
}

// SanitizeReason makes s a valid REASON: invalid UTF-8 is replaced by
// U+FFFD and the string is cut, at a character boundary, to MaxNameLen
// bytes.
func SanitizeReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= MaxNameLen {
		return s
	}
	cut := MaxNameLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// message builds one handshake message.
type message struct{ b []byte }

func newMessage(t MsgType, version uint16) message {
	if version == 0 {
		version = Version
	}
	b := make([]byte, HandshakeHeaderSize, 256)
	binary.LittleEndian.PutUint32(b[0:4], HandshakeMagic)
	binary.LittleEndian.PutUint16(b[4:6], version)
	b[6] = byte(t)
	b[7] = 0
	return message{b}
}

// send fills in the body length and writes the message with one Write.
func (m message) send(w io.Writer) error {
	body := len(m.b) - HandshakeHeaderSize
	if body > MaxHandshakeBody { // cannot happen with the attributes we send
		return fmt.Errorf("wire: handshake body is %d bytes, limit %d", body, MaxHandshakeBody)
	}
	binary.LittleEndian.PutUint32(m.b[8:12], uint32(body))
	n, err := w.Write(m.b)
	if err == nil && n < len(m.b) {
		err = io.ErrShortWrite
	}
	return err
}

// WriteHello validates h and writes it as a HELLO with a single Write.
func WriteHello(w io.Writer, h *Hello) error {
	if err := h.Validate(); err != nil {
		return err
	}
	m := newMessage(MsgHello, h.Version)
	m.b = appendString(m.b, AttrHelloExportName, h.Export)
	m.b = appendU64(m.b, AttrHelloFeatures, uint64(h.Features))
	if h.HasSession {
		m.b = appendAttr(m.b, AttrHelloSession, h.Session[:])
	}
	if h.WantReadOnly {
		m.b = appendBool(m.b, AttrHelloWantRO, true)
	}
	if h.ClientName != "" {
		m.b = appendString(m.b, AttrHelloClientName, h.ClientName)
	}
	if h.MaxInflight != 0 {
		m.b = appendU32(m.b, AttrHelloMaxInflight, h.MaxInflight)
	}
	if h.TagSize != 0 {
		m.b = appendU8(m.b, AttrHelloTagSize, h.TagSize)
	}
	if len(h.Crypto) > 0 {
		m.b = appendAttr(m.b, AttrHelloCrypto, h.Crypto)
	}
	return m.send(w)
}

// WriteWelcome validates m and writes it as a WELCOME with a single Write.
// RESUMED and READ_ONLY are always sent.
func WriteWelcome(w io.Writer, m *Welcome) error {
	if err := m.Validate(); err != nil {
		return err
	}
	msg := newMessage(MsgWelcome, m.Version)
	b := msg.b
	b = appendAttr(b, AttrWelcomeSession, m.Session[:])
	b = appendBool(b, AttrWelcomeResumed, m.Resumed)
	b = appendU64(b, AttrWelcomeExportSize, m.Size)
	b = appendU32(b, AttrWelcomeLogicalBlock, m.LogicalBlock)
	pb := m.PhysicalBlock
	if pb == 0 {
		pb = m.LogicalBlock
	}
	b = appendU32(b, AttrWelcomePhysicalBlock, pb)
	b = appendU32(b, AttrWelcomeMaxTransfer, m.MaxTransfer)
	b = appendBool(b, AttrWelcomeReadOnly, m.ReadOnly)
	b = appendU64(b, AttrWelcomeFeatures, uint64(m.Features))
	b = appendU32(b, AttrWelcomeMaxInflight, m.MaxInflight)
	dg := m.DiscardGranularity
	if dg == 0 && m.Features&FeatDiscard != 0 {
		dg = m.LogicalBlock
	}
	if dg != 0 {
		b = appendU32(b, AttrWelcomeDiscardGranularity, dg)
	}
	if m.TagSize != 0 {
		b = appendU8(b, AttrWelcomeTagSize, m.TagSize)
	}
	if m.ExporterName != "" {
		b = appendString(b, AttrWelcomeExporterName, m.ExporterName)
	}
	if len(m.Crypto) > 0 {
		b = appendAttr(b, AttrWelcomeCrypto, m.Crypto)
	}
	msg.b = b
	return msg.send(w)
}

// WriteRefuse writes r as a REFUSE with a single Write. The reason is
// passed through SanitizeReason. It fails only if Code is 0 or on a write
// error.
func WriteRefuse(w io.Writer, r *Refuse) error {
	if r.Code == 0 {
		return errors.New("wire: REFUSE with code 0")
	}
	m := newMessage(MsgRefuse, r.Version)
	m.b = appendU16(m.b, AttrRefuseCode, uint16(r.Code))
	if reason := SanitizeReason(r.Reason); reason != "" {
		m.b = appendString(m.b, AttrRefuseReason, reason)
	}
	return m.send(w)
}

// handshakeHeader is a decoded handshake header.
type handshakeHeader struct {
	version uint16
	typ     MsgType
	bodyLen int
}

// parseHandshakeHeader decodes b[:12]: magic, reserved byte, a known type
// and a body length ≤ MaxHandshakeBody.
func parseHandshakeHeader(b []byte) (handshakeHeader, *HandshakeError) {
	if binary.LittleEndian.Uint32(b[0:4]) != HandshakeMagic {
		return handshakeHeader{}, malformed("magic %s, want \"DSTH\"", magicString(b))
	}
	h := handshakeHeader{
		version: binary.LittleEndian.Uint16(b[4:6]),
		typ:     MsgType(b[6]),
	}
	if b[7] != 0 {
		return h, malformed("reserved byte 7 = %#x, not zero", b[7])
	}
	if h.typ < MsgHello || h.typ > MsgRefuse {
		return h, malformed("unknown handshake message type %d", uint8(h.typ))
	}
	n := binary.LittleEndian.Uint32(b[8:12])
	if n > MaxHandshakeBody {
		return h, malformed("%v body length %d exceeds %d", h.typ, n, MaxHandshakeBody)
	}
	h.bodyLen = int(n)
	return h, nil
}

// readMessage reads one handshake message: the header, then exactly the
// declared body (at most MaxHandshakeBody bytes are allocated, and only
// after the header is checked). The body's structure is checked.
func readMessage(r io.Reader) (handshakeHeader, []byte, error) {
	var hb [HandshakeHeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return handshakeHeader{}, nil, fmt.Errorf("wire: reading handshake header: %w", err)
	}
	h, herr := parseHandshakeHeader(hb[:])
	if herr != nil {
		return h, nil, herr
	}
	body := make([]byte, h.bodyLen)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, fmt.Errorf("wire: reading %v body: %w", h.typ, err)
	}
	if _, err := checkAttrs(body); err != nil {
		return h, nil, err
	}
	return h, body, nil
}

// unknownCritical returns the UNSUPPORTED error for the first critical
// attribute of body for which known returns false, or nil.
func unknownCritical(t MsgType, body []byte, known func(uint16) bool) error {
	for p := body; len(p) > 0; {
		var a Attr
		a, p = nextAttr(p)
		if a.Critical() && !known(a.Type) {
			return &HandshakeError{Code: RefuseUnsupported,
				Reason: fmt.Sprintf("unknown critical attribute %#04x in %v", a.Type, t)}
		}
	}
	return nil
}

// ReadHello reads a HELLO (exporter side). It checks, in this order, the
// header (magic, reserved byte, type HELLO, version ≥ 1, body length), the
// structure of the body (see ParseAttrs), unknown critical attributes
// (Code UNSUPPORTED), the values (sizes, booleans, strings, export name,
// MAX_INFLIGHT 1..MaxInflightLimit), and the required attributes
// (EXPORT_NAME, CLIENT_FEATURES). Unknown non-critical attributes are
// skipped.
//
// A version above Version is not an error: the Hello is returned with it
// and negotiation (NegotiateVersion) is the caller's business.
//
// Rule violations are *HandshakeError (Code MALFORMED unless stated); the
// exporter answers them with h.Refuse(). Other errors come from r (a
// stream that ends early gives io.ErrUnexpectedEOF or io.EOF, wrapped).
func ReadHello(r io.Reader) (*Hello, error) {
	hdr, body, err := readMessage(r)
	if err != nil {
		return nil, err
	}
	if hdr.typ != MsgHello {
		return nil, malformed("got %v, want HELLO", hdr.typ)
	}
	if hdr.version == 0 {
		return nil, malformed("HELLO with version 0")
	}
	if err := unknownCritical(MsgHello, body, func(t uint16) bool { return t == AttrHelloExportName || t == AttrHelloCrypto }); err != nil {
		return nil, err
	}
	h := &Hello{Version: hdr.version}
	var haveName, haveFeatures bool
	var firstErr error
	for p := body; len(p) > 0; {
		var a Attr
		a, p = nextAttr(p)
		var err error
		switch a.Type {
		case AttrHelloExportName:
			haveName = true
			if err = ValidExportName(string(a.Value)); err == nil {
				h.Export = string(a.Value)
			}
		case AttrHelloFeatures:
			haveFeatures = true
			var v uint64
			v, err = getU64("CLIENT_FEATURES", a)
			h.Features = Features(v)
		case AttrHelloSession:
			h.Session, err = getToken("SESSION", a)
			h.HasSession = err == nil
		case AttrHelloWantRO:
			h.WantReadOnly, err = getBool("WANT_READ_ONLY", a)
		case AttrHelloClientName:
			h.ClientName, err = getString("CLIENT_NAME", a)
		case AttrHelloMaxInflight:
			h.MaxInflight, err = getU32("MAX_INFLIGHT", a)
			if err == nil && (h.MaxInflight < 1 || h.MaxInflight > MaxInflightLimit) {
				err = malformed("MAX_INFLIGHT %d is not in 1..%d", h.MaxInflight, MaxInflightLimit)
			}
		case AttrHelloTagSize:
			h.TagSize, err = getU8("TAG_SIZE", a)
		case AttrHelloCrypto:
			h.Crypto = a.Value
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if !haveName {
		return nil, malformed("HELLO without EXPORT_NAME")
	}
	if !haveFeatures {
		return nil, malformed("HELLO without CLIENT_FEATURES")
	}
	return h, nil
}

// ReadWelcome reads the exporter's answer to a HELLO (client side).
//
// For a REFUSE it returns a *RefuseError with the code and reason (any
// header version is accepted; CODE is required and not 0; REASON, if
// present, must be a valid string).
//
// For a WELCOME it checks the version (1..Version; a higher one gets Code
// VERSION), the structure of the body (see ParseAttrs), unknown critical
// attributes (Code UNSUPPORTED), value sizes, the required attributes
// (SESSION, EXPORT_SIZE, LOGICAL_BLOCK, MAX_TRANSFER, MAX_INFLIGHT,
// SERVER_FEATURES) and the values (Welcome.Validate). PhysicalBlock and,
// when DISCARD is offered, DiscardGranularity default to LogicalBlock.
// Whether Features and TagSize agree with the HELLO is the caller's check.
//
// Rule violations are *HandshakeError; other errors come from r.
func ReadWelcome(r io.Reader) (*Welcome, error) {
	hdr, body, err := readMessage(r)
	if err != nil {
		return nil, err
	}
	switch hdr.typ {
	case MsgRefuse:
		return nil, parseRefuse(hdr, body)
	case MsgWelcome:
	default:
		return nil, malformed("got %v, want WELCOME or REFUSE", hdr.typ)
	}
	if hdr.version == 0 {
		return nil, malformed("WELCOME with version 0")
	}
	if hdr.version > Version {
		return nil, &HandshakeError{Code: RefuseVersion,
			Reason: fmt.Sprintf("exporter chose version %d, this client speaks up to %d", hdr.version, Version)}
	}
	if err := unknownCritical(MsgWelcome, body, func(t uint16) bool { return t == AttrWelcomeCrypto }); err != nil {
		return nil, err
	}
	w := &Welcome{Version: hdr.version}
	var have attrSet
	var firstErr error
	havePhysical, haveDiscard := false, false
	for p := body; len(p) > 0; {
		var a Attr
		a, p = nextAttr(p)
		var err error
		switch a.Type {
		case AttrWelcomeSession:
			w.Session, err = getToken("SESSION", a)
		case AttrWelcomeResumed:
			w.Resumed, err = getBool("RESUMED", a)
		case AttrWelcomeExportSize:
			w.Size, err = getU64("EXPORT_SIZE", a)
		case AttrWelcomeLogicalBlock:
			w.LogicalBlock, err = getU32("LOGICAL_BLOCK", a)
		case AttrWelcomePhysicalBlock:
			havePhysical = true
			w.PhysicalBlock, err = getU32("PHYSICAL_BLOCK", a)
			if err == nil && w.PhysicalBlock == 0 {
				err = malformed("PHYSICAL_BLOCK is 0")
			}
		case AttrWelcomeMaxTransfer:
			w.MaxTransfer, err = getU32("MAX_TRANSFER", a)
		case AttrWelcomeReadOnly:
			w.ReadOnly, err = getBool("READ_ONLY", a)
		case AttrWelcomeFeatures:
			var v uint64
			v, err = getU64("SERVER_FEATURES", a)
			w.Features = Features(v)
		case AttrWelcomeMaxInflight:
			w.MaxInflight, err = getU32("MAX_INFLIGHT", a)
		case AttrWelcomeDiscardGranularity:
			haveDiscard = true
			w.DiscardGranularity, err = getU32("DISCARD_GRANULARITY", a)
			if err == nil && w.DiscardGranularity == 0 {
				err = malformed("DISCARD_GRANULARITY is 0")
			}
		case AttrWelcomeTagSize:
			w.TagSize, err = getU8("TAG_SIZE", a)
		case AttrWelcomeExporterName:
			w.ExporterName, err = getString("EXPORTER_NAME", a)
		case AttrWelcomeCrypto:
			w.Crypto = a.Value
		}
		have.add(a.Type)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	for _, req := range []struct {
		t    uint16
		name string
	}{
		{AttrWelcomeSession, "SESSION"},
		{AttrWelcomeExportSize, "EXPORT_SIZE"},
		{AttrWelcomeLogicalBlock, "LOGICAL_BLOCK"},
		{AttrWelcomeMaxTransfer, "MAX_TRANSFER"},
		{AttrWelcomeMaxInflight, "MAX_INFLIGHT"},
		{AttrWelcomeFeatures, "SERVER_FEATURES"},
	} {
		if !have.add(req.t) {
			return nil, malformed("WELCOME without %s", req.name)
		}
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if !havePhysical {
		w.PhysicalBlock = w.LogicalBlock
	}
	if !haveDiscard && w.Features&FeatDiscard != 0 {
		w.DiscardGranularity = w.LogicalBlock
	}
	return w, nil
}

// parseRefuse decodes a REFUSE body into a *RefuseError, or returns a
// *HandshakeError if the REFUSE itself is malformed.
func parseRefuse(hdr handshakeHeader, body []byte) error {
	if err := unknownCritical(MsgRefuse, body, func(uint16) bool { return false }); err != nil {
		return err
	}
	e := &RefuseError{Version: hdr.version}
	haveCode := false
	var firstErr error
	for p := body; len(p) > 0; {
		var a Attr
		a, p = nextAttr(p)
		var err error
		switch a.Type {
		case AttrRefuseCode:
			haveCode = true
			var v uint16
			v, err = getU16("CODE", a)
			e.Code = RefuseCode(v)
			if err == nil && v == 0 {
				err = malformed("REFUSE with CODE 0")
			}
		case AttrRefuseReason:
			e.Reason, err = getString("REASON", a)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return firstErr
	}
	if !haveCode {
		return malformed("REFUSE without CODE")
	}
	return e
}
