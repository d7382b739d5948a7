package crypto

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dst-dev/dst/internal/wire"
)

// FuzzOpen feeds arbitrary frames to the opener of every suite (in place
// and OpenTo, any split of header, payload and trailer). It must not panic
// and must refuse whatever was not sealed by the peer; a frame that the
// fuzzer derives from a sealed one by changing bytes must be refused too.
func FuzzOpen(f *testing.F) {
	c, _ := testSession(f, AES256GCM)
	hdr := testHdr(1)
	body := make([]byte, 20+16)
	c.Send.Seal(hdr, body[:20], body[20:])
	f.Add(uint8(3), append(bytes.Clone(hdr), body...), uint16(40), int16(-1))
	f.Add(uint8(0), []byte("DSTQ0123456789012345678901234567890123456789"), uint16(40), int16(3))
	f.Fuzz(func(t *testing.T, which uint8, frame []byte, hdrLen uint16, flip int16) {
		s := Suites[int(which)%len(Suites)]
		tag := s.TagSize()
		h := min(int(hdrLen), len(frame))
		if len(frame)-h < tag {
			return
		}
		client, exporter := testSession(t, s)
		hdr, rest := frame[:h], frame[h:]
		n := len(rest) - tag
		// Arbitrary bytes: refused, except by an astronomically lucky
		// guess (for checksums, a correct checksum is allowed).
		in := bytes.Clone(rest)
		plain := make([]byte, n)
		err := exporter.Recv.OpenTo(hdr, in, plain)
		switch {
		case err == nil:
			// Only what the peer sealed at this position opens.
			again, _ := testSession(t, s)
			resealed := make([]byte, n+tag)
			again.Send.SealTo(hdr, plain, resealed)
			if !bytes.Equal(resealed, rest) {
				t.Fatalf("%v: opened a frame the peer did not seal", s)
			}
		case s.Keyed() && err != ErrAuth, !s.Keyed() && err != ErrCorrupt:
			t.Fatalf("%v: %v", s, err)
		}
		// The same payload sealed properly opens; with one byte
		// flipped it does not.
		_, exporter = testSession(t, s)
		sealed := make([]byte, n+tag)
		client.Send.SealTo(hdr, rest[:n], sealed)
		full := append(bytes.Clone(hdr), sealed...)
		if flip >= 0 && int(flip) < len(full) {
			full[flip] ^= 0x5a
		}
		err = exporter.Recv.Open(full[:h], full[h:h+n], full[h+n:])
		if flip >= 0 && int(flip) < len(full) {
			want := ErrCorrupt
			if s.Keyed() {
				want = ErrAuth
			}
			if err != want {
				t.Fatalf("%v: flipped byte %d: %v", s, flip, err)
			}
		} else if err != nil || !bytes.Equal(full[h:h+n], rest[:n]) {
			t.Fatalf("%v: round trip: %v", s, err)
		}
	})
}

// FuzzParseOffer: no panics; a value that parses re-encodes to itself.
func FuzzParseOffer(f *testing.F) {
	f.Add([]byte{1, 1})
	f.Add(append([]byte{2, 1}, make([]byte, 64)...))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		o, err := ParseOffer(v)
		if err != nil {
			var he *wire.HandshakeError
			if !errors.As(err, &he) {
				t.Fatalf("error %v is not a *wire.HandshakeError", err)
			}
			return
		}
		if o.Suite.Known() && !bytes.Equal(o.Append(nil), v) {
			t.Fatalf("%x re-encodes as %x", v, o.Append(nil))
		}
	})
}

// FuzzReadFinished: no panics, bounded allocation, and only the
// documented error types.
func FuzzReadFinished(f *testing.F) {
	h, _ := NewClient(Config{Suite: AES256GCM, Key: &Key{1}})
	h.version = 1
	f.Add(h.finished([32]byte{1, 2, 3}))
	var refuse bytes.Buffer
	wire.WriteRefuse(&refuse, &wire.Refuse{Code: wire.RefuseAccessDenied, Reason: "no"})
	f.Add(refuse.Bytes())
	f.Add([]byte("DSTH\x01\x00\x04\x00\x00\x00\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fin, err := ReadFinished(bytes.NewReader(b))
		if err == nil {
			if fin == nil {
				t.Fatal("nil FINISHED without error")
			}
			return
		}
		var he *wire.HandshakeError
		var re *wire.RefuseError
		if !errors.As(err, &he) && !errors.As(err, &re) && !bytes.Contains([]byte(err.Error()), []byte("EOF")) {
			t.Fatalf("unexpected error type: %v", err)
		}
	})
}

// FuzzHello feeds arbitrary HELLOs to the exporter's Hello (every
// configuration) and arbitrary WELCOMEs to the client's Welcome: no panics,
// exporter errors are *wire.HandshakeError.
func FuzzHello(f *testing.F) {
	k := &Key{1}
	c, _ := NewClient(Config{Suite: AES256GCM, Key: k})
	f.Add(testHello(c.HelloAttr(), 16), uint8(3))
	f.Add(testHello([]byte{1, 1}, 4), uint8(0))
	f.Add(testWelcome(c.attr(), 16), uint8(3))
	f.Fuzz(func(t *testing.T, msg []byte, which uint8) {
		s := allSuites[int(which)%len(allSuites)]
		cfg := Config{Suite: s}
		if s.Keyed() {
			cfg.Key = k
		}
		srv, _ := NewServer(cfg)
		if err := srv.Hello(msg); err != nil {
			var he *wire.HandshakeError
			if !errors.As(err, &he) {
				t.Fatalf("exporter error %v is not a *wire.HandshakeError", err)
			}
		}
		cl, _ := NewClient(cfg)
		hello := testHello(cl.HelloAttr(), cl.TagSize())
		if err := cl.Hello(hello); err != nil {
			t.Fatal(err)
		}
		cl.Welcome(msg) // any error is fine; no panic
	})
}
