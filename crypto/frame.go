package crypto

// Frame protection (PROTOCOL.md §8.5).
//
//	serial   Sealer.Next / Opener.Next: assign the frame number, the epoch
//	         (rekeying when one is used up) and the nonce, in stream order.
//	any      Frame.Seal, SealTo, Open, OpenTo: the work itself; a Frame
//	         only reads its epoch, which is immutable, so frames of one
//	         direction can be processed on many goroutines at once.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"hash/crc32"
	"math"
	"sync"
	"unsafe"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// Errors of frame protection. Open and OpenTo return ErrCorrupt or ErrAuth
// themselves (never wrapped), so comparing with == is enough; both mean
// the frame is lost (PROTOCOL.md §8.5): do not use its header, do not
// execute or answer it, count it.
var (
	// ErrCorrupt: a checksum trailer does not match (checksum mode).
	ErrCorrupt = errors.New("crypto: checksum mismatch, frame dropped")
	// ErrAuth: an AEAD frame does not authenticate (wrong position in the
	// stream, replayed, forged, tampered or corrupted).
	ErrAuth = errors.New("crypto: frame authentication failed, frame dropped")
	// ErrExhausted: the direction's frame counter is used up (2^64
	// frames); the connection must be closed and re-established.
	ErrExhausted = errors.New("crypto: frame counter exhausted, reconnect")
)

// Epoch limits (PROTOCOL.md §8.5): an AEAD key protects at most
// EpochFrames frames and EpochBytes payload bytes.
const (
	EpochFrames = 1 << 32
	EpochBytes  = 1 << 36
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// epoch is one AEAD key of one direction. Immutable once built.
type epoch struct {
	aead cipher.AEAD
	iv   [nonceSize]byte
}

func newEpoch(s Suite, secret *[secretSize]byte) (*epoch, [secretSize]byte) {
	key, iv, next := trafficKeys(secret)
	defer clear(key[:])
	var (
		a   cipher.AEAD
		err error
	)
	switch s {
	case AES256GCM:
		var b cipher.Block
		if b, err = aes.NewCipher(key[:]); err == nil {
			a, err = cipher.NewGCM(b)
		}
	case ChaCha20Poly1305:
		a, err = chacha20poly1305.New(key[:])
	default:
		panic("crypto: newEpoch for " + s.String())
	}
	if err != nil {
		panic("crypto: " + err.Error()) // 32-byte keys cannot fail
	}
	return &epoch{aead: a, iv: iv}, next
}

// stream is the state shared by Sealer and Opener: one direction of one
// connection.
type stream struct {
	suite  Suite
	tag    int
	secret [secretSize]byte // AEAD: the secret of the next epoch
	cur    *epoch
	seq    uint64 // number of the next frame
	frames uint64 // frames in the current epoch
	bytes  uint64 // payload bytes in the current epoch
	epochs uint64 // epochs started (for tests and stats)

	epochFrames, epochBytes uint64 // EpochFrames, EpochBytes; tests lower them

	scratch Frame // for the one-call Seal/Open
}

func newStream(s Suite, secret *[secretSize]byte) stream {
	st := stream{suite: s, tag: s.TagSize(), epochFrames: EpochFrames, epochBytes: EpochBytes}
	if s.Keyed() {
		st.secret = *secret
	}
	return st
}

// next assigns the next frame, of payload length n.
func (st *stream) next(n int) (Frame, error) {
	if n < 0 || uint64(n) > math.MaxUint32 {
		panic("crypto: payload length out of range")
	}
	if st.seq == math.MaxUint64 {
		return Frame{}, ErrExhausted
	}
	f := Frame{suite: st.suite, tag: uint8(st.tag), seq: st.seq}
	st.seq++
	if !st.suite.Keyed() {
		return f, nil
	}
	if st.cur == nil || st.frames >= st.epochFrames || st.bytes+uint64(n) > st.epochBytes {
		var next [secretSize]byte
		st.cur, next = newEpoch(st.suite, &st.secret)
		st.secret = next
		st.frames, st.bytes = 0, 0
		st.epochs++
	}
	st.frames++
	st.bytes += uint64(n)
	f.ep = st.cur
	f.nonce = st.cur.iv
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], f.seq)
	for i := range s {
		f.nonce[4+i] ^= s[i]
	}
	return f, nil
}

// Sealer protects the frames one side sends on one connection. Its methods
// are not safe for concurrent use: Next (and the one-call Seal and SealTo)
// must be called in the order the frames are written to the stream. The
// Frames it returns may be sealed on any goroutine.
type Sealer struct{ st stream }

// Opener verifies the frames one side receives on one connection. Its
// methods are not safe for concurrent use: Next (and the one-call Open and
// OpenTo) must be called in the order the frames were read from the
// stream. The Frames it returns may be opened on any goroutine.
type Opener struct{ st stream }

// Suite returns the connection's suite.
func (s *Sealer) Suite() Suite { return s.st.suite }

// TagSize is the trailer size (TAG_SIZE): every frame is followed by it.
func (s *Sealer) TagSize() int { return s.st.tag }

// Encrypts reports whether payloads are encrypted (AEAD): then the payload
// changes and a sender that must keep the plaintext (for a resend) seals
// into another buffer with SealTo.
func (s *Sealer) Encrypts() bool { return s.st.suite.Keyed() }

// Next assigns the next frame, whose payload is n bytes (0 for a frame
// without payload). Its only error is ErrExhausted.
func (s *Sealer) Next(n int) (Frame, error) { return s.st.next(n) }

// Seal is Next(len(payload)) then Frame.Seal.
func (s *Sealer) Seal(hdr, payload, trailer []byte) error {
	f, err := s.st.next(len(payload))
	if err != nil {
		return err
	}
	s.st.scratch = f
	s.st.scratch.Seal(hdr, payload, trailer)
	return nil
}

// SealTo is Next(len(payload)) then Frame.SealTo.
func (s *Sealer) SealTo(hdr, payload, out []byte) error {
	f, err := s.st.next(len(payload))
	if err != nil {
		return err
	}
	s.st.scratch = f
	s.st.scratch.SealTo(hdr, payload, out)
	return nil
}

// Suite returns the connection's suite.
func (o *Opener) Suite() Suite { return o.st.suite }

// TagSize is the trailer size (TAG_SIZE): every frame is followed by it.
func (o *Opener) TagSize() int { return o.st.tag }

// Encrypts reports whether payloads are encrypted (AEAD).
func (o *Opener) Encrypts() bool { return o.st.suite.Keyed() }

// Next assigns the next frame read from the stream, whose payload is n
// bytes (the header's payload length, 0 for none). Call it for every frame
// read, including those that will fail to open. Its only error is
// ErrExhausted.
func (o *Opener) Next(n int) (Frame, error) { return o.st.next(n) }

// Open is Next(len(payload)) then Frame.Open.
func (o *Opener) Open(hdr, payload, trailer []byte) error {
	f, err := o.st.next(len(payload))
	if err != nil {
		return err
	}
	o.st.scratch = f
	return o.st.scratch.Open(hdr, payload, trailer)
}

// OpenTo is Next(len(in)-TagSize()) then Frame.OpenTo.
func (o *Opener) OpenTo(hdr, in, out []byte) error {
	if len(in) < o.st.tag {
		panic("crypto: OpenTo input shorter than the trailer")
	}
	f, err := o.st.next(len(in) - o.st.tag)
	if err != nil {
		return err
	}
	o.st.scratch = f
	return o.st.scratch.OpenTo(hdr, in, out)
}

// Frame is one frame's place in its direction's stream: its number, and
// for AEAD its key and nonce. Sealer.Next and Opener.Next hand them out;
// the methods may run on any goroutine, one Frame at a time.
//
// The methods take a pointer: keep the Frame in memory that is already on
// the heap (a Job, a per-transaction record) for the hot path to be
// allocation-free; the AEAD reads the nonce through an interface, so a
// Frame on the stack escapes.
//
// Buffers: hdr is authenticated and never written. With AEAD, an output
// must either be exactly its input (same first byte: in place) or not
// overlap it at all. After a failed Open or OpenTo the payload or output
// holds garbage.
type Frame struct {
	ep    *epoch
	seq   uint64
	suite Suite
	tag   uint8
	nonce [nonceSize]byte
}

// Seq returns the frame's number in its direction (from 0).
func (f *Frame) Seq() uint64 { return f.seq }

// Suite returns the frame's suite.
func (f *Frame) Suite() Suite { return f.suite }

// adjacent reports whether b starts right where a ends, in a's array.
func adjacent(a, b []byte) bool {
	n := len(a)
	return cap(a)-n >= len(b) && len(b) > 0 && unsafe.SliceData(a[n:n+len(b)]) == unsafe.SliceData(b)
}

func (f *Frame) checkTrailer(trailer []byte) {
	if len(trailer) != int(f.tag) {
		panic("crypto: trailer is not TagSize bytes")
	}
}

// Seal protects a frame in place: it writes the trailer (TagSize bytes)
// and, under AEAD, encrypts payload in place. Under AEAD the trailer must
// directly follow the payload in memory (payload and trailer are
// body[:n] and body[n:n+TagSize] of one buffer) unless the payload is
// empty; other modes accept any trailer buffer and leave payload as is.
func (f *Frame) Seal(hdr, payload, trailer []byte) {
	f.checkTrailer(trailer)
	switch f.suite.Mode() {
	case ModeNone:
	case ModeChecksum:
		f.checksum(hdr, payload, trailer)
	case ModeAEAD:
		if len(payload) == 0 {
			f.ep.aead.Seal(trailer[:0], f.nonce[:], nil, hdr)
			return
		}
		if !adjacent(payload, trailer) {
			panic("crypto: AEAD Seal needs the trailer right after the payload (use SealTo)")
		}
		f.ep.aead.Seal(payload[:0], f.nonce[:], payload, hdr)
	}
}

// SealTo protects a frame into out, which must be len(payload)+TagSize
// bytes: out[:n] receives the payload (encrypted under AEAD; a copy
// otherwise, unless out[:n] is payload) and out[n:] the trailer. payload is
// not changed unless it is out[:n].
func (f *Frame) SealTo(hdr, payload, out []byte) {
	n := len(payload)
	if len(out) != n+int(f.tag) {
		panic("crypto: SealTo output is not payload+TagSize bytes")
	}
	if f.suite.Keyed() {
		f.ep.aead.Seal(out[:0], f.nonce[:], payload, hdr)
		return
	}
	copyIfDistinct(out[:n], payload)
	if f.suite.Mode() == ModeChecksum {
		f.checksum(hdr, payload, out[n:])
	}
}

// Open verifies a frame in place and, under AEAD, decrypts payload in
// place. Under AEAD the trailer must directly follow the payload in memory
// unless the payload is empty. It returns nil, ErrCorrupt or ErrAuth.
func (f *Frame) Open(hdr, payload, trailer []byte) error {
	f.checkTrailer(trailer)
	switch f.suite.Mode() {
	case ModeChecksum:
		return f.verify(hdr, payload, trailer)
	case ModeAEAD:
		n := len(payload)
		var err error
		if n == 0 {
			_, err = f.ep.aead.Open(trailer[:0], f.nonce[:], trailer, hdr)
		} else {
			if !adjacent(payload, trailer) {
				panic("crypto: AEAD Open needs the trailer right after the payload (use OpenTo)")
			}
			_, err = f.ep.aead.Open(payload[:0], f.nonce[:], payload[:n+len(trailer)], hdr)
		}
		if err != nil {
			return ErrAuth
		}
	}
	return nil
}

// OpenTo verifies a frame as received, in = payload ‖ trailer, and writes
// the payload (decrypted under AEAD) into out, which must be len(in) -
// TagSize bytes and may be in[:len(out)]. It returns nil, ErrCorrupt or
// ErrAuth; on an error out holds garbage (or is untouched).
func (f *Frame) OpenTo(hdr, in, out []byte) error {
	n := len(in) - int(f.tag)
	if n < 0 || len(out) != n {
		panic("crypto: OpenTo output is not input-TagSize bytes")
	}
	switch f.suite.Mode() {
	case ModeChecksum:
		if err := f.verify(hdr, in[:n], in[n:]); err != nil {
			return err
		}
	case ModeAEAD:
		if _, err := f.ep.aead.Open(out[:0], f.nonce[:], in, hdr); err != nil {
			return ErrAuth
		}
		return nil
	}
	copyIfDistinct(out, in[:n])
	return nil
}

func copyIfDistinct(dst, src []byte) {
	if len(src) > 0 && unsafe.SliceData(dst) != unsafe.SliceData(src) {
		copy(dst, src)
	}
}

// sumState is a pooled hasher with an output buffer: both live on the
// heap, so neither escapes per call.
type sumState struct {
	sha hash.Hash
	b3  *blake3.Hasher
	out [32]byte
}

var sumPool = sync.Pool{New: func() any { return &sumState{sha: sha256.New(), b3: blake3.New()} }}

// sum writes the checksum of hdr ‖ payload into st.out and returns it.
func (f *Frame) sum(st *sumState, hdr, payload []byte) []byte {
	switch f.suite {
	case CRC32C:
		c := crc32.Update(0, castagnoli, hdr)
		c = crc32.Update(c, castagnoli, payload)
		binary.LittleEndian.PutUint32(st.out[:4], c)
		return st.out[:4]
	case SHA256:
		st.sha.Reset()
		st.sha.Write(hdr)
		st.sha.Write(payload)
		return st.sha.Sum(st.out[:0])
	case BLAKE3:
		st.b3.Reset()
		st.b3.Write(hdr)
		st.b3.Write(payload)
		return st.b3.Sum(st.out[:0])
	}
	panic("crypto: checksum for " + f.suite.String())
}

// checksum writes the checksum of hdr ‖ payload into trailer.
func (f *Frame) checksum(hdr, payload, trailer []byte) {
	st := sumPool.Get().(*sumState)
	copy(trailer, f.sum(st, hdr, payload))
	sumPool.Put(st)
}

func (f *Frame) verify(hdr, payload, trailer []byte) error {
	st := sumPool.Get().(*sumState)
	ok := subtle.ConstantTimeCompare(f.sum(st, hdr, payload), trailer) == 1
	sumPool.Put(st)
	if !ok {
		return ErrCorrupt
	}
	return nil
}
