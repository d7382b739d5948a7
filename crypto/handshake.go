package crypto

// The crypto part of the handshake (PROTOCOL.md §8.2–§8.4).
//
// A Handshake is fed the HELLO and the WELCOME exactly as they went over
// the wire (Hello, Welcome), supplies the CRYPTO attribute values for them
// (HelloAttr, WelcomeAttr), and for a keyed suite runs the FINISHED
// exchange (Finish), which returns the Session: the Sealer and Opener of
// the connection.
//
//	client                               exporter
//	NewClient                            NewServer
//	HelloAttr -> put in HELLO
//	write HELLO; Hello(bytes)    ----->  read HELLO; Hello(bytes) (refuse on error)
//	                                     WelcomeAttr -> put in WELCOME
//	read WELCOME; Welcome(bytes) <-----  write WELCOME; Welcome(bytes)
//	Finish(conn)                 <---->  Finish(conn)

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/dst-dev/dst/internal/wire"
)

// Handshake message and attribute numbers added by PROTOCOL.md §8.
const (
	MsgFinished wire.MsgType = 4 // FINISHED

	AttrHelloCrypto   uint16 = 0x8008 // HELLO CRYPTO (critical)
	AttrWelcomeCrypto uint16 = 0x810D // WELCOME CRYPTO (critical)
	AttrConfirm       uint16 = 0x0401 // FINISHED CONFIRM, 32 bytes

	// MaxFinishedBody bounds the body of a FINISHED (and of a REFUSE
	// read in its place).
	MaxFinishedBody = 4096

	randomSize = 32
	shareSize  = 32
	// keyedAttrLen is the size of a mode-2 CRYPTO value.
	keyedAttrLen = 2 + randomSize + shareSize
)

// ErrKeyMismatch is matched (errors.Is) by the errors of a failed key
// confirmation, on both sides: the two sides do not hold the same key (or
// the connection is being tampered with).
var ErrKeyMismatch = errors.New("key confirmation failed")

// Config is one side's crypto configuration.
type Config struct {
	// Suite is the configured suite (None: no crypto).
	Suite Suite
	// Key is the pre-shared key: required for a keyed suite, and must be
	// nil otherwise.
	Key *Key
	// Rand supplies the handshake random and the X25519 ephemeral secret
	// (32 bytes each, in that order); nil means crypto/rand. Tests set it
	// to get known answers.
	Rand io.Reader
}

func (c *Config) check() error {
	if !c.Suite.Known() {
		return fmt.Errorf("crypto: unknown suite %v", c.Suite)
	}
	if c.Suite.Keyed() && c.Key == nil {
		return fmt.Errorf("crypto: %v needs a key (--key-file)", c.Suite)
	}
	if !c.Suite.Keyed() && c.Key != nil {
		return fmt.Errorf("crypto: a key file is only used with --cipher (the suite is %v)", c.Suite)
	}
	return nil
}

// Offer is a decoded CRYPTO attribute value.
type Offer struct {
	Suite  Suite
	Random [randomSize]byte // mode 2 only
	Share  [shareSize]byte  // mode 2 only: an X25519 public key
}

// ParseOffer decodes a CRYPTO attribute value: mode u8 | alg u8, then for
// mode 2 random [32] | share [32]. The length must fit the mode (2 bytes for
// mode 1, 66 for mode 2); mode 0 is not sent and is malformed. An unknown
// mode or algorithm is not an error here (its length cannot be checked for
// an unknown mode): the suite is returned for the caller to refuse. Errors
// are *wire.HandshakeError with Code MALFORMED.
func ParseOffer(v []byte) (Offer, error) {
	var o Offer
	if len(v) < 2 {
		return o, malformedf("CRYPTO is %d bytes, want at least 2", len(v))
	}
	o.Suite = MakeSuite(Mode(v[0]), v[1])
	switch o.Suite.Mode() {
	case ModeNone:
		return o, malformedf("CRYPTO with mode 0 (a peer without crypto sends no CRYPTO)")
	case ModeChecksum:
		if len(v) != 2 {
			return o, malformedf("CRYPTO for mode 1 is %d bytes, want 2", len(v))
		}
	case ModeAEAD:
		if len(v) != keyedAttrLen {
			return o, malformedf("CRYPTO for mode 2 is %d bytes, want %d", len(v), keyedAttrLen)
		}
		copy(o.Random[:], v[2:34])
		copy(o.Share[:], v[34:66])
	}
	return o, nil
}

// Append appends the encoding of o to b.
func (o *Offer) Append(b []byte) []byte {
	b = append(b, byte(o.Suite.Mode()), o.Suite.Alg())
	if o.Suite.Keyed() {
		b = append(b, o.Random[:]...)
		b = append(b, o.Share[:]...)
	}
	return b
}

func malformedf(format string, args ...any) *wire.HandshakeError {
	return &wire.HandshakeError{Code: wire.RefuseMalformed, Reason: fmt.Sprintf(format, args...)}
}

func unsupportedf(format string, args ...any) *wire.HandshakeError {
	return &wire.HandshakeError{Code: wire.RefuseUnsupported, Reason: fmt.Sprintf(format, args...)}
}

// Handshake is the crypto side of one connection's handshake, for one side.
// It is not safe for concurrent use. Steps out of order panic.
type Handshake struct {
	cfg    Config
	client bool
	step   int // stepNew, stepHello, stepWelcome, stepDone

	own     Offer
	eph     *ecdh.PrivateKey
	peer    Offer
	version uint16 // the version chosen in the WELCOME

	th    hash.Hash // running transcript hash
	th1   [transcriptHashLen]byte
	sched schedule
}

const (
	stepNew = iota
	stepHello
	stepWelcome
	stepDone
)

// NewClient starts the client side of a handshake.
func NewClient(cfg Config) (*Handshake, error) { return newHandshake(cfg, true) }

// NewServer starts the exporter side of a handshake.
func NewServer(cfg Config) (*Handshake, error) { return newHandshake(cfg, false) }

func newHandshake(cfg Config, client bool) (*Handshake, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	h := &Handshake{cfg: cfg, client: client, th: sha256.New()}
	h.own.Suite = cfg.Suite
	if cfg.Suite.Keyed() {
		var secret [32]byte
		if _, err := io.ReadFull(cfg.Rand, h.own.Random[:]); err != nil {
			return nil, fmt.Errorf("crypto: reading random: %w", err)
		}
		if _, err := io.ReadFull(cfg.Rand, secret[:]); err != nil {
			return nil, fmt.Errorf("crypto: reading random: %w", err)
		}
		eph, err := ecdh.X25519().NewPrivateKey(secret[:])
		clear(secret[:])
		if err != nil {
			return nil, fmt.Errorf("crypto: X25519 key: %w", err)
		}
		h.eph = eph
		copy(h.own.Share[:], eph.PublicKey().Bytes())
	}
	return h, nil
}

// Suite returns the configured suite.
func (h *Handshake) Suite() Suite { return h.cfg.Suite }

// TagSize is the TAG_SIZE to send in HELLO or WELCOME (0 for None).
func (h *Handshake) TagSize() uint8 { return uint8(h.cfg.Suite.TagSize()) }

// HelloAttr returns the value of the HELLO's CRYPTO attribute (0x8008), or
// nil when the suite is None (then no attribute is sent).
func (h *Handshake) HelloAttr() []byte {
	if !h.client {
		panic("crypto: HelloAttr on the exporter side")
	}
	return h.attr()
}

// WelcomeAttr returns the value of the WELCOME's CRYPTO attribute
// (0x810D), or nil when the suite is None. Call it after Hello succeeded.
func (h *Handshake) WelcomeAttr() []byte {
	if h.client || h.step != stepHello {
		panic("crypto: WelcomeAttr out of order")
	}
	return h.attr()
}

func (h *Handshake) attr() []byte {
	if h.cfg.Suite == None {
		return nil
	}
	return h.own.Append(nil)
}

// message is a handshake message as it went over the wire.
type message struct {
	version uint16
	typ     wire.MsgType
	attrs   []wire.Attr
}

// parseMessage decodes a whole handshake message (header and body, as
// recorded from the wire) of type want.
func parseMessage(msg []byte, want wire.MsgType) (message, error) {
	var m message
	if len(msg) < wire.HandshakeHeaderSize {
		return m, malformedf("%v is %d bytes, shorter than a header", want, len(msg))
	}
	if binary.LittleEndian.Uint32(msg[0:4]) != wire.HandshakeMagic {
		return m, malformedf("%v: magic %q, want \"DSTH\"", want, msg[0:4])
	}
	m.version = binary.LittleEndian.Uint16(msg[4:6])
	m.typ = wire.MsgType(msg[6])
	if m.typ != want {
		return m, malformedf("got %v, want %v", m.typ, want)
	}
	if msg[7] != 0 {
		return m, malformedf("%v: reserved byte %#x", want, msg[7])
	}
	if n := binary.LittleEndian.Uint32(msg[8:12]); uint64(n) != uint64(len(msg)-wire.HandshakeHeaderSize) {
		return m, malformedf("%v: body length %d, message has %d", want, n, len(msg)-wire.HandshakeHeaderSize)
	}
	attrs, err := wire.ParseAttrs(msg[wire.HandshakeHeaderSize:])
	if err != nil {
		return m, err
	}
	m.attrs = attrs
	return m, nil
}

func (m *message) find(t uint16) ([]byte, bool) {
	for _, a := range m.attrs {
		if a.Type == t {
			return a.Value, true
		}
	}
	return nil, false
}

// tagSizeAttr returns the TAG_SIZE attribute (0 when absent).
func (m *message) tagSizeAttr(t uint16) (int, error) {
	v, ok := m.find(t)
	if !ok {
		return 0, nil
	}
	if len(v) != 1 {
		return 0, malformedf("TAG_SIZE is %d bytes, want 1", len(v))
	}
	return int(v[0]), nil
}

// Hello feeds the HELLO exactly as it went over the wire (header and
// body). The exporter checks the client's CRYPTO and TAG_SIZE against its
// configuration: an error is a *wire.HandshakeError whose Refuse() the
// exporter sends before closing (UNSUPPORTED for a suite mismatch or crypto
// on one side only, MALFORMED for a bad value). The client checks that its
// own HELLO carries its CRYPTO attribute (a wiring bug otherwise).
func (h *Handshake) Hello(msg []byte) error {
	if h.step != stepNew {
		panic("crypto: Hello out of order")
	}
	m, err := parseMessage(msg, wire.MsgHello)
	if err != nil {
		return err
	}
	v, present := m.find(AttrHelloCrypto)
	tagSize, err := m.tagSizeAttr(wire.AttrHelloTagSize)
	if err != nil {
		return err
	}
	if h.client {
		if want := h.attr(); present != (want != nil) || !bytes.Equal(v, want) || tagSize != h.cfg.Suite.TagSize() {
			return fmt.Errorf("crypto: the HELLO does not carry this handshake's CRYPTO attribute and TAG_SIZE")
		}
	} else if err := h.checkPeer(v, present, tagSize, "HELLO"); err != nil {
		return err
	}
	h.th.Write(msg)
	h.step = stepHello
	return nil
}

// checkPeer is the exporter's check of the client's CRYPTO (PROTOCOL.md
// §8.2).
func (h *Handshake) checkPeer(v []byte, present bool, tagSize int, where string) error {
	mine := h.cfg.Suite
	if !present {
		if mine != None {
			return unsupportedf("this exporter requires %v; the client offered no crypto (use --cipher/--checksum and --key-file)", mine)
		}
		return nil
	}
	o, err := ParseOffer(v)
	if err != nil {
		return err
	}
	if !o.Suite.Known() {
		return unsupportedf("unknown crypto suite mode %d algorithm %d", o.Suite.Mode(), o.Suite.Alg())
	}
	if mine == None {
		return unsupportedf("the client asks for %v, but this exporter runs without crypto", o.Suite)
	}
	if o.Suite != mine {
		return unsupportedf("the client asks for %v, this exporter is configured for %v", o.Suite, mine)
	}
	if tagSize != mine.TagSize() {
		return malformedf("%s TAG_SIZE %d does not match %v (%d)", where, tagSize, mine, mine.TagSize())
	}
	h.peer = o
	return nil
}

// Welcome feeds the WELCOME exactly as it went over the wire. The client
// checks that the exporter confirmed its suite; its errors name what
// differs, and the client then closes the connection without sending
// anything. For a keyed suite both sides derive the key schedule here.
func (h *Handshake) Welcome(msg []byte) error {
	if h.step != stepHello {
		panic("crypto: Welcome out of order")
	}
	m, err := parseMessage(msg, wire.MsgWelcome)
	if err != nil {
		return err
	}
	v, present := m.find(AttrWelcomeCrypto)
	tagSize, err := m.tagSizeAttr(wire.AttrWelcomeTagSize)
	if err != nil {
		return err
	}
	mine := h.cfg.Suite
	if h.client {
		if err := h.checkWelcome(v, present, tagSize); err != nil {
			return err
		}
	} else if want := h.attr(); present != (want != nil) || !bytes.Equal(v, want) || tagSize != mine.TagSize() {
		return fmt.Errorf("crypto: the WELCOME does not carry this handshake's CRYPTO attribute and TAG_SIZE")
	}
	h.version = m.version
	h.th.Write(msg)
	h.th.Sum(h.th1[:0])
	h.step = stepWelcome
	if mine.Keyed() {
		pub, err := ecdh.X25519().NewPublicKey(h.peer.Share[:])
		if err == nil {
			var dhe []byte
			dhe, err = h.eph.ECDH(pub)
			if err == nil {
				h.sched = deriveSchedule(h.cfg.Key, dhe, h.th1[:])
				clear(dhe)
			}
		}
		if err != nil {
			return fmt.Errorf("crypto: X25519 with the peer's share: %w", err)
		}
	}
	return nil
}

func (h *Handshake) checkWelcome(v []byte, present bool, tagSize int) error {
	mine := h.cfg.Suite
	if !present {
		if mine != None {
			return fmt.Errorf("crypto: exporter did not confirm %v: refusing an unprotected connection", mine)
		}
		if tagSize != 0 {
			return fmt.Errorf("crypto: exporter set TAG_SIZE %d without crypto", tagSize)
		}
		return nil
	}
	o, err := ParseOffer(v)
	if err != nil {
		return fmt.Errorf("crypto: exporter's CRYPTO: %w", err)
	}
	if mine == None {
		return fmt.Errorf("crypto: exporter answered with %v, which this client did not ask for", o.Suite)
	}
	if o.Suite != mine {
		return fmt.Errorf("crypto: exporter answered with %v, this client asked for %v", o.Suite, mine)
	}
	if tagSize != mine.TagSize() {
		return fmt.Errorf("crypto: exporter's TAG_SIZE %d does not match %v (%d)", tagSize, mine, mine.TagSize())
	}
	h.peer = o
	return nil
}

// Finish ends the handshake and returns the connection's Session. For an
// unkeyed suite it does no I/O. For a keyed one it runs the FINISHED
// exchange of PROTOCOL.md §8.3 on rw: the exporter writes its FINISHED then
// reads and verifies the client's; the client reads and verifies the
// exporter's, then writes its own. On a failed verification the verifier
// sends REFUSE ACCESS_DENIED; the error then matches ErrKeyMismatch on both
// sides (the exporter's side also when the client refused). Set deadlines
// on rw before calling it.
func (h *Handshake) Finish(rw io.ReadWriter) (*Session, error) {
	if h.step != stepWelcome {
		panic("crypto: Finish out of order")
	}
	h.step = stepDone
	if !h.cfg.Suite.Keyed() {
		return h.session(), nil
	}
	finE := h.finished(confirmTag(&h.sched.fkE, h.th1[:]))
	if h.client {
		if err := h.readFinished(rw, finE, "exporter"); err != nil {
			return nil, err
		}
		h.th.Write(finE)
		finC := h.finished(confirmTag(&h.sched.fkC, h.th.Sum(nil)))
		if _, err := rw.Write(finC); err != nil {
			return nil, fmt.Errorf("crypto: writing FINISHED: %w", err)
		}
	} else {
		if _, err := rw.Write(finE); err != nil {
			return nil, fmt.Errorf("crypto: writing FINISHED: %w", err)
		}
		h.th.Write(finE)
		finC := h.finished(confirmTag(&h.sched.fkC, h.th.Sum(nil)))
		if err := h.readFinished(rw, finC, "client"); err != nil {
			return nil, err
		}
	}
	return h.session(), nil
}

// Session is what a finished handshake yields: the protection of both
// directions of the connection.
type Session struct {
	// Suite in effect.
	Suite Suite
	// Send protects the frames this side writes: requests on the client,
	// replies on the exporter.
	Send *Sealer
	// Recv verifies the frames this side reads.
	Recv *Opener
}

func (h *Handshake) session() *Session {
	c2e := newStream(h.cfg.Suite, &h.sched.c2e)
	e2c := newStream(h.cfg.Suite, &h.sched.e2c)
	h.sched = schedule{}
	if h.client {
		return &Session{Suite: h.cfg.Suite, Send: &Sealer{c2e}, Recv: &Opener{e2c}}
	}
	return &Session{Suite: h.cfg.Suite, Send: &Sealer{e2c}, Recv: &Opener{c2e}}
}

// NewSession returns the Session of an unkeyed suite (None or a checksum)
// without a handshake, for tests and tools.
func NewSession(s Suite) (*Session, error) {
	if !s.Known() || s.Keyed() {
		return nil, fmt.Errorf("crypto: NewSession(%v): only unkeyed suites", s)
	}
	c2e := newStream(s, nil)
	e2c := newStream(s, nil)
	return &Session{Suite: s, Send: &Sealer{c2e}, Recv: &Opener{e2c}}, nil
}
