package crypto

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/internal/wire"
)

type katFrame struct{ Hdr, Payload, Sealed string }

type katVectors map[string]map[string]json.RawMessage

func loadKAT(t *testing.T) katVectors {
	b, err := os.ReadFile("testdata/kat.json")
	if err != nil {
		t.Fatal(err)
	}
	var v katVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v katVectors) hex(t *testing.T, suite, name string) []byte {
	t.Helper()
	var s string
	if err := json.Unmarshal(v[suite][name], &s); err != nil {
		t.Fatalf("kat %s %s: %v", suite, name, err)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unhex(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHKDFRFC5869 checks the HKDF helpers on RFC 5869 test case 1.
func TestHKDFRFC5869(t *testing.T) {
	prk := extract(unhex(t, "000102030405060708090a0b0c"), bytes.Repeat([]byte{0x0b}, 22))
	if got, want := hex.EncodeToString(prk), "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"; got != want {
		t.Errorf("PRK %s, want %s", got, want)
	}
	okm := make([]byte, 42)
	expand(prk, string(unhex(t, "f0f1f2f3f4f5f6f7f8f9")), okm)
	if got, want := hex.EncodeToString(okm), "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"; got != want {
		t.Errorf("OKM %s, want %s", got, want)
	}
}

// TestKnownAnswers runs a keyed handshake with fixed keys and randoms and
// compares every message, the key schedule and the first frames of each
// direction with testdata/kat.json, computed independently by kat.py.
func TestKnownAnswers(t *testing.T) {
	kat := loadKAT(t)
	for _, suite := range []Suite{AES256GCM, ChaCha20Poly1305} {
		t.Run(suite.String(), func(t *testing.T) {
			name := suite.String()
			psk := Key(seqBytes(0, 32))
			c, err := NewClient(Config{Suite: suite, Key: &psk, Rand: fixedRand(seqBytes(0x40, 32), seqBytes(0x60, 32))})
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewServer(Config{Suite: suite, Key: &psk, Rand: fixedRand(seqBytes(0x80, 32), seqBytes(0xa0, 32))})
			if err != nil {
				t.Fatal(err)
			}
			hello := testHello(c.HelloAttr(), c.TagSize())
			if want := kat.hex(t, name, "hello"); !bytes.Equal(hello, want) {
				t.Fatalf("HELLO\n got %x\nwant %x", hello, want)
			}
			if err := c.Hello(hello); err != nil {
				t.Fatal(err)
			}
			if err := s.Hello(hello); err != nil {
				t.Fatal(err)
			}
			welcome := testWelcome(s.WelcomeAttr(), s.TagSize())
			if want := kat.hex(t, name, "welcome"); !bytes.Equal(welcome, want) {
				t.Fatalf("WELCOME\n got %x\nwant %x", welcome, want)
			}
			if err := s.Welcome(welcome); err != nil {
				t.Fatal(err)
			}
			if err := c.Welcome(welcome); err != nil {
				t.Fatal(err)
			}
			if want := kat.hex(t, name, "th1"); !bytes.Equal(c.th1[:], want) || !bytes.Equal(s.th1[:], want) {
				t.Errorf("TH_1 %x / %x, want %x", c.th1, s.th1, want)
			}
			// The FINISHED exchange, recorded.
			cc, sc := tcpPair(t)
			var rec recorder
			type out struct {
				s   *Session
				err error
			}
			done := make(chan out)
			go func() {
				sess, err := s.Finish(&recordConn{sc, &rec.server})
				done <- out{sess, err}
			}()
			csess, err := c.Finish(&recordConn{cc, &rec.client})
			if err != nil {
				t.Fatal(err)
			}
			so := <-done
			if so.err != nil {
				t.Fatal(so.err)
			}
			if want := kat.hex(t, name, "finished_e"); !bytes.Equal(rec.server.Bytes(), want) {
				t.Errorf("exporter FINISHED\n got %x\nwant %x", rec.server.Bytes(), want)
			}
			if want := kat.hex(t, name, "finished_c"); !bytes.Equal(rec.client.Bytes(), want) {
				t.Errorf("client FINISHED\n got %x\nwant %x", rec.client.Bytes(), want)
			}
			// Key schedule: epochs 0 and 1 of both directions.
			for _, d := range []struct {
				name   string
				secret [32]byte
			}{{"c2e", csess.Send.st.secret}, {"e2c", so.s.Send.st.secret}} {
				secret := d.secret
				for k := range 2 {
					key, iv, next := trafficKeys(&secret)
					if want := kat.hex(t, name, d.name+"_key"+string(rune('0'+k))); !bytes.Equal(key[:], want) {
						t.Errorf("%s key[%d] %x, want %x", d.name, k, key, want)
					}
					if want := kat.hex(t, name, d.name+"_iv"+string(rune('0'+k))); !bytes.Equal(iv[:], want) {
						t.Errorf("%s iv[%d] %x, want %x", d.name, k, iv, want)
					}
					secret = next
				}
			}
			// Frames: the client seals c2e, the exporter e2c; the
			// other side opens them.
			for _, d := range []struct {
				name string
				send *Sealer
				recv *Opener
			}{{"c2e", csess.Send, so.s.Recv}, {"e2c", so.s.Send, csess.Recv}} {
				var frames []katFrame
				if err := json.Unmarshal(kat[name][d.name+"_frames"], &frames); err != nil {
					t.Fatal(err)
				}
				for i, f := range frames {
					hdr, payload, want := unhex(t, f.Hdr), unhex(t, f.Payload), unhex(t, f.Sealed)
					out := make([]byte, len(payload)+16)
					if err := d.send.SealTo(hdr, payload, out); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(out, want) {
						t.Errorf("%s frame %d sealed\n got %x\nwant %x", d.name, i, out, want)
					}
					plain := make([]byte, len(payload))
					if err := d.recv.OpenTo(hdr, out, plain); err != nil || !bytes.Equal(plain, payload) {
						t.Errorf("%s frame %d: open: %v, %x", d.name, i, err, plain)
					}
				}
			}
		})
	}
}

type recorder struct{ client, server bytes.Buffer }

// recordConn records what is written.
type recordConn struct {
	net.Conn
	w *bytes.Buffer
}

func (r *recordConn) Write(b []byte) (int, error) {
	r.w.Write(b)
	return r.Conn.Write(b)
}

func newKey(t testing.TB) *Key {
	var k Key
	for i := range k {
		k[i] = byte(i*7 + 1)
	}
	return &k
}

// TestHandshakeRoundTrip: every suite, handshake over TCP, then frames
// both ways.
func TestHandshakeRoundTrip(t *testing.T) {
	checkNoLeak(t)
	for _, suite := range append([]Suite{None}, Suites...) {
		t.Run(suite.String(), func(t *testing.T) {
			cfg := Config{Suite: suite}
			if suite.Keyed() {
				cfg.Key = newKey(t)
			}
			c, s := handshakePair(t, cfg, cfg, nil, nil)
			if c.err != nil || s.err != nil {
				t.Fatalf("client: %v, exporter: %v", c.err, s.err)
			}
			if c.sess.Suite != suite || s.sess.Suite != suite || c.sess.Send.TagSize() != suite.TagSize() {
				t.Fatalf("suites %v %v", c.sess.Suite, s.sess.Suite)
			}
			roundTrip(t, c.sess.Send, s.sess.Recv, 10)
			roundTrip(t, s.sess.Send, c.sess.Recv, 10)
		})
	}
}

// roundTrip seals n frames of growing size and opens them.
func roundTrip(t *testing.T, s *Sealer, o *Opener, n int) {
	t.Helper()
	tag := s.TagSize()
	for i := range n {
		hdr := bytes.Repeat([]byte{byte(i)}, 40)
		payload := bytes.Repeat([]byte{byte(i + 1)}, i*97)
		body := make([]byte, len(payload)+tag)
		copy(body, payload)
		if err := s.Seal(hdr, body[:len(payload)], body[len(payload):]); err != nil {
			t.Fatal(err)
		}
		if err := o.Open(hdr, body[:len(payload)], body[len(payload):]); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(body[:len(payload)], payload) {
			t.Fatalf("frame %d: payload differs", i)
		}
	}
}

// TestHandshakeRefusals: mismatches are refused at the handshake, with a
// clear message on both sides, and no session on either.
func TestHandshakeRefusals(t *testing.T) {
	checkNoLeak(t)
	k1, k2 := newKey(t), newKey(t)
	k2[0] ^= 1
	tests := []struct {
		name               string
		client, server     Config
		clientErr, servErr string
		keyMismatch        bool
	}{
		{"wrong key aes", Config{Suite: AES256GCM, Key: k1}, Config{Suite: AES256GCM, Key: k2},
			"the exporter does not hold the same key", "the client does not hold this exporter's key", true},
		{"wrong key chacha", Config{Suite: ChaCha20Poly1305, Key: k1}, Config{Suite: ChaCha20Poly1305, Key: k2},
			"the exporter does not hold the same key", "the client does not hold this exporter's key", true},
		{"cipher mismatch", Config{Suite: ChaCha20Poly1305, Key: k1}, Config{Suite: AES256GCM, Key: k1},
			"the client asks for chacha20-poly1305, this exporter is configured for aes-256-gcm (UNSUPPORTED)",
			"the client asks for chacha20-poly1305, this exporter is configured for aes-256-gcm", false},
		{"checksum mismatch", Config{Suite: CRC32C}, Config{Suite: BLAKE3},
			"the client asks for crc32c, this exporter is configured for blake3", "the client asks for crc32c", false},
		{"checksum vs cipher", Config{Suite: SHA256}, Config{Suite: AES256GCM, Key: k1},
			"the client asks for sha256, this exporter is configured for aes-256-gcm", "configured for aes-256-gcm", false},
		{"client without crypto", Config{}, Config{Suite: AES256GCM, Key: k1},
			"this exporter requires aes-256-gcm; the client offered no crypto", "this exporter requires aes-256-gcm", false},
		{"exporter without crypto", Config{Suite: AES256GCM, Key: k1}, Config{},
			"the client asks for aes-256-gcm, but this exporter runs without crypto", "runs without crypto", false},
		{"exporter without checksum", Config{Suite: CRC32C}, Config{},
			"the client asks for crc32c, but this exporter runs without crypto", "runs without crypto", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := handshakePair(t, tt.client, tt.server, nil, nil)
			if c.sess != nil || s.sess != nil {
				t.Fatalf("a session was established (client %v, exporter %v)", c.sess != nil, s.sess != nil)
			}
			mustContain(t, "client", c.err, tt.clientErr)
			mustContain(t, "exporter", s.err, tt.servErr)
			if tt.keyMismatch && (!errors.Is(c.err, ErrKeyMismatch) || !errors.Is(s.err, ErrKeyMismatch)) {
				t.Errorf("errors do not match ErrKeyMismatch: %v / %v", c.err, s.err)
			}
			var re *wire.RefuseError
			if !tt.keyMismatch && !errors.As(c.err, &re) {
				t.Errorf("client error %v is not the exporter's REFUSE", c.err)
			}
			var he *wire.HandshakeError
			if !tt.keyMismatch && (!errors.As(s.err, &he) || he.Code != wire.RefuseUnsupported) {
				t.Errorf("exporter error %v is not an UNSUPPORTED refusal", s.err)
			}
		})
	}
}

// TestClientRefusesWelcome: a WELCOME that does not confirm the client's
// suite fails the connection on the client (the exporter is simulated).
func TestClientRefusesWelcome(t *testing.T) {
	k := newKey(t)
	aes, _ := NewClient(Config{Suite: AES256GCM, Key: k})
	other := Offer{Suite: ChaCha20Poly1305}
	tests := []struct {
		name    string
		cfg     Config
		welcome []byte
		want    string
	}{
		{"no CRYPTO", Config{Suite: AES256GCM, Key: k}, testWelcome(nil, 0), "exporter did not confirm aes-256-gcm: refusing an unprotected connection"},
		{"no CRYPTO checksum", Config{Suite: CRC32C}, testWelcome(nil, 4), "exporter did not confirm crc32c"},
		{"other suite", Config{Suite: AES256GCM, Key: k}, testWelcome(other.Append(nil), 16), "exporter answered with chacha20-poly1305, this client asked for aes-256-gcm"},
		{"unasked", Config{}, testWelcome([]byte{1, 1}, 4), "exporter answered with crc32c, which this client did not ask for"},
		{"tag size", Config{Suite: CRC32C}, testWelcome([]byte{1, 1}, 16), "TAG_SIZE 16 does not match crc32c (4)"},
		{"bad CRYPTO length", Config{Suite: AES256GCM, Key: k}, testWelcome(aes.attr()[:40], 16), "CRYPTO for mode 2 is 40 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			hello := testHello(c.HelloAttr(), c.TagSize())
			if err := c.Hello(hello); err != nil {
				t.Fatal(err)
			}
			mustContain(t, "client", c.Welcome(tt.welcome), tt.want)
		})
	}
}

// TestExporterHelloChecks covers the exporter's refusals of malformed
// CRYPTO values.
func TestExporterHelloChecks(t *testing.T) {
	k := newKey(t)
	tests := []struct {
		name  string
		hello []byte
		code  wire.RefuseCode
		want  string
	}{
		{"unknown suite", testHello([]byte{1, 9}, 4), wire.RefuseUnsupported, "unknown crypto suite mode 1 algorithm 9"},
		{"unknown mode", testHello([]byte{7, 1}, 4), wire.RefuseUnsupported, "unknown crypto suite mode 7"},
		{"mode 0", testHello([]byte{0, 0}, 0), wire.RefuseMalformed, "mode 0"},
		{"short", testHello([]byte{2}, 16), wire.RefuseMalformed, "want at least 2"},
		{"mode 1 long", testHello([]byte{1, 1, 0}, 4), wire.RefuseMalformed, "mode 1 is 3 bytes"},
		{"tag size", testHello(append([]byte{2, 1}, make([]byte, 64)...), 4), wire.RefuseMalformed, "TAG_SIZE 4 does not match aes-256-gcm (16)"},
		{"no tag size", testHello(append([]byte{2, 1}, make([]byte, 64)...), 0), wire.RefuseMalformed, "TAG_SIZE 0"},
		{"not a hello", testWelcome(nil, 0), wire.RefuseMalformed, "got WELCOME, want HELLO"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := NewServer(Config{Suite: AES256GCM, Key: k})
			err := s.Hello(tt.hello)
			var he *wire.HandshakeError
			if !errors.As(err, &he) || he.Code != tt.code || !strings.Contains(he.Reason, tt.want) {
				t.Errorf("Hello: %v, want %v containing %q", err, tt.code, tt.want)
			}
		})
	}
	// A low-order X25519 share fails the exporter's key derivation.
	s, _ := NewServer(Config{Suite: AES256GCM, Key: k})
	if err := s.Hello(testHello(append([]byte{2, 1}, make([]byte, 64)...), 16)); err != nil {
		t.Fatal(err)
	}
	mustContain(t, "zero share", s.Welcome(testWelcome(s.WelcomeAttr(), 16)), "X25519")
}

// TestHandshakeTamper flips every byte the two sides write during a keyed
// handshake, one at a time. The exporter must never end up with a
// session, and the client only when the flipped byte is in its own
// FINISHED (which the exporter then refuses).
func TestHandshakeTamper(t *testing.T) {
	checkNoLeak(t)
	cfg := Config{Suite: AES256GCM, Key: newKey(t)}
	// Sizes of what each side writes.
	hs, _ := NewClient(cfg)
	helloLen := len(testHello(hs.HelloAttr(), hs.TagSize()))
	const finLen = wire.HandshakeHeaderSize + 4 + 32
	welcomeLen := len(testWelcome(hs.attr(), 16))
	old := handshakeDeadline
	handshakeDeadline = 500 * time.Millisecond
	defer func() { handshakeDeadline = old }()
	for at := range helloLen + finLen {
		c, s := handshakePair(t, cfg, cfg, func(c net.Conn) net.Conn { return &flipConn{Conn: c, at: at} }, nil)
		if s.sess != nil {
			t.Fatalf("client byte %d flipped: the exporter accepted the handshake", at)
		}
		if c.sess != nil && at < helloLen {
			t.Fatalf("client byte %d (HELLO) flipped: the client accepted the handshake", at)
		}
	}
	for at := range welcomeLen + finLen {
		c, s := handshakePair(t, cfg, cfg, nil, func(c net.Conn) net.Conn { return &flipConn{Conn: c, at: at} })
		if c.sess != nil || s.sess != nil {
			t.Fatalf("exporter byte %d flipped: a session was established (client %v, exporter %v)", at, c.sess != nil, s.sess != nil)
		}
	}
}

// TestExporterRefusesBadClientFinished: a client FINISHED that does not
// verify gets REFUSE ACCESS_DENIED, which the client can read.
func TestExporterRefusesBadClientFinished(t *testing.T) {
	cfg := Config{Suite: ChaCha20Poly1305, Key: newKey(t)}
	hs, _ := NewClient(cfg)
	helloLen := len(testHello(hs.HelloAttr(), hs.TagSize()))
	cc, sc := tcpPair(t)
	flip := &flipConn{Conn: cc, at: helloLen + wire.HandshakeHeaderSize + 4 + 5} // inside CONFIRM
	done := make(chan error)
	go func() {
		_, err := serverSide(sc, cfg)
		done <- err
	}()
	if _, err := clientSide(flip, cfg); err != nil {
		t.Fatalf("client: %v", err)
	}
	serr := <-done
	if !errors.Is(serr, ErrKeyMismatch) {
		t.Errorf("exporter: %v", serr)
	}
	_, err := wire.ReadWelcome(cc) // the REFUSE that follows
	var re *wire.RefuseError
	if !errors.As(err, &re) || re.Code != wire.RefuseAccessDenied || !strings.Contains(re.Reason, "key confirmation failed") {
		t.Errorf("client read %v after its FINISHED, want REFUSE ACCESS_DENIED", err)
	}
}

func TestConfigChecks(t *testing.T) {
	if _, err := NewClient(Config{Suite: AES256GCM}); err == nil || !strings.Contains(err.Error(), "needs a key") {
		t.Errorf("keyed suite without key: %v", err)
	}
	if _, err := NewServer(Config{Suite: CRC32C, Key: newKey(t)}); err == nil || !strings.Contains(err.Error(), "only used with --cipher") {
		t.Errorf("checksum with key: %v", err)
	}
	if _, err := NewServer(Config{Suite: MakeSuite(ModeAEAD, 9), Key: newKey(t)}); err == nil {
		t.Errorf("unknown suite accepted")
	}
}

// TestFreshKeysPerConnection: two handshakes with the same key give
// different traffic secrets (both sides contribute randoms and shares).
func TestFreshKeysPerConnection(t *testing.T) {
	cfg := Config{Suite: AES256GCM, Key: newKey(t)}
	seen := map[[32]byte]bool{}
	for range 20 {
		c, s := handshakePair(t, cfg, cfg, nil, nil)
		if c.err != nil || s.err != nil {
			t.Fatal(c.err, s.err)
		}
		for _, sec := range [][32]byte{c.sess.Send.st.secret, c.sess.Recv.st.secret} {
			if seen[sec] {
				t.Fatal("a traffic secret repeated across connections")
			}
			seen[sec] = true
		}
		if c.sess.Send.st.secret != s.sess.Recv.st.secret || c.sess.Recv.st.secret != s.sess.Send.st.secret {
			t.Fatal("the two sides disagree on the traffic secrets")
		}
	}
}
