package crypto

import (
	"bytes"
	"encoding/hex"
	"math"
	"math/rand/v2"
	"testing"
)

// testSession returns a session pair (client, exporter) for suite s.
// Keyed suites get fixed traffic secrets (no handshake).
func testSession(t testing.TB, s Suite) (client, exporter *Session) {
	t.Helper()
	var c2e, e2c [32]byte
	for i := range c2e {
		c2e[i], e2c[i] = byte(i), byte(100+i)
	}
	mk := func(sec *[32]byte) stream { return newStream(s, sec) }
	client = &Session{Suite: s, Send: &Sealer{mk(&c2e)}, Recv: &Opener{mk(&e2c)}}
	exporter = &Session{Suite: s, Send: &Sealer{mk(&e2c)}, Recv: &Opener{mk(&c2e)}}
	return
}

var allSuites = append([]Suite{None}, Suites...)

func testHdr(i int) []byte {
	h := make([]byte, 40)
	copy(h, "DSTQ")
	h[4] = 2
	h[8] = byte(i)
	h[9] = byte(i >> 8)
	return h
}

// TestFrameRoundTrip: every suite, every API form, several sizes, both
// directions.
func TestFrameRoundTrip(t *testing.T) {
	for _, s := range allSuites {
		t.Run(s.String(), func(t *testing.T) {
			c, e := testSession(t, s)
			tag := s.TagSize()
			i := 0
			for _, n := range []int{0, 1, 15, 16, 4096, 128<<10 + 3} {
				for _, dir := range [][2]*Session{{c, e}, {e, c}} {
					send, recv := dir[0].Send, dir[1].Recv
					payload := make([]byte, n)
					for j := range payload {
						payload[j] = byte(j*31 + n)
					}
					hdr := testHdr(i)
					i++
					// In place.
					body := make([]byte, n+tag)
					copy(body, payload)
					if err := send.Seal(hdr, body[:n], body[n:]); err != nil {
						t.Fatal(err)
					}
					if s.Keyed() && n >= 16 && bytes.Equal(body[:n], payload) {
						t.Fatalf("n=%d: AEAD left the payload in the clear", n)
					}
					if !s.Keyed() && !bytes.Equal(body[:n], payload) {
						t.Fatalf("n=%d: %v changed the payload", n, s)
					}
					if err := recv.Open(hdr, body[:n], body[n:]); err != nil {
						t.Fatalf("n=%d Open: %v", n, err)
					}
					if !bytes.Equal(body[:n], payload) {
						t.Fatalf("n=%d: payload differs after Open", n)
					}
					// Out of place: SealTo keeps the plaintext, OpenTo
					// writes elsewhere.
					out := make([]byte, n+tag)
					keep := bytes.Clone(payload)
					if err := send.SealTo(hdr, payload, out); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(payload, keep) {
						t.Fatal("SealTo changed its input")
					}
					plain := make([]byte, n)
					if err := recv.OpenTo(hdr, out, plain); err != nil {
						t.Fatalf("n=%d OpenTo: %v", n, err)
					}
					if !bytes.Equal(plain, payload) {
						t.Fatalf("n=%d: payload differs after OpenTo", n)
					}
					// OpenTo in place (out = in[:n]), Open of a SealTo
					// frame: the forms interoperate.
					if err := send.SealTo(hdr, payload, out); err != nil {
						t.Fatal(err)
					}
					if err := recv.OpenTo(hdr, out, out[:n]); err != nil || !bytes.Equal(out[:n], payload) {
						t.Fatalf("n=%d OpenTo in place: %v", n, err)
					}
					if err := send.SealTo(hdr, payload, out); err != nil {
						t.Fatal(err)
					}
					if err := recv.Open(hdr, out[:n], out[n:]); err != nil || !bytes.Equal(out[:n], payload) {
						t.Fatalf("n=%d Open of SealTo: %v", n, err)
					}
				}
			}
		})
	}
}

// TestTamperEveryByte: for a small frame, changing any single byte of
// header, payload or trailer (every position, three patterns) is refused.
func TestTamperEveryByte(t *testing.T) {
	for _, s := range Suites {
		t.Run(s.String(), func(t *testing.T) {
			for _, n := range []int{0, 24} {
				c, e := testSession(t, s)
				tag := s.TagSize()
				hdr := testHdr(7)
				payload := bytes.Repeat([]byte("x"), n)
				sealed := make([]byte, n+tag)
				sealer := c.Send
				f, _ := sealer.Next(n)
				f.SealTo(hdr, payload, sealed)
				frame := append(bytes.Clone(hdr), sealed...) // header ‖ payload ‖ trailer
				for pos := range frame {
					for _, x := range []byte{0x01, 0x80, 0xff} {
						bad := bytes.Clone(frame)
						bad[pos] ^= x
						// Every attempt is opened at the frame's own
						// position (a fresh opener's frame 0).
						_, fresh := testSession(t, s)
						o := fresh.Recv
						err := o.OpenTo(bad[:40], bad[40:], make([]byte, n))
						want := ErrCorrupt
						if s.Keyed() {
							want = ErrAuth
						}
						if err != want {
							t.Fatalf("n=%d byte %d ^%#x: %v, want %v", n, pos, x, err, want)
						}
					}
				}
				// And the untouched frame opens.
				_, fresh := testSession(t, s)
				if err := fresh.Recv.OpenTo(frame[:40], frame[40:], make([]byte, n)); err != nil {
					t.Fatal(err)
				}
				_ = e
			}
		})
	}
}

// TestReplayAndReorder: the window is 0. A replayed frame, frames in the
// wrong order, a frame from another connection or direction: refused. A
// frame lost in between (tampered, same position) does not stop the next
// one from opening.
func TestReplayAndReorder(t *testing.T) {
	for _, s := range []Suite{AES256GCM, ChaCha20Poly1305} {
		t.Run(s.String(), func(t *testing.T) {
			c, _ := testSession(t, s)
			type fr struct{ hdr, body []byte }
			var frames []fr
			for i := range 5 {
				hdr, body := testHdr(i), make([]byte, 32+16)
				copy(body, "payload payload payload payload!")
				if err := c.Send.Seal(hdr, body[:32], body[32:]); err != nil {
					t.Fatal(err)
				}
				frames = append(frames, fr{hdr, body})
			}
			open := func(o *Opener, f fr) error {
				b := bytes.Clone(f.body)
				return o.Open(f.hdr, b[:32], b[32:])
			}
			// In order: fine.
			_, e := testSession(t, s)
			for i, f := range frames {
				if err := open(e.Recv, f); err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
			}
			// Replay: frame 4 again (as frame 5), and frame 0.
			if err := open(e.Recv, frames[4]); err != ErrAuth {
				t.Errorf("replay of the last frame: %v", err)
			}
			_, e = testSession(t, s)
			open(e.Recv, frames[0])
			if err := open(e.Recv, frames[0]); err != ErrAuth {
				t.Errorf("immediate replay: %v", err)
			}
			// Reorder: 1 before 0.
			_, e = testSession(t, s)
			if err := open(e.Recv, frames[1]); err != ErrAuth {
				t.Errorf("frame 1 first: %v", err)
			}
			if err := open(e.Recv, frames[0]); err != ErrAuth {
				t.Errorf("frame 0 second: %v", err)
			}
			// A lost frame (corrupted at its own position) does not
			// desynchronize: the next one opens.
			_, e = testSession(t, s)
			bad := fr{frames[0].hdr, bytes.Clone(frames[0].body)}
			bad.body[3] ^= 1
			if err := open(e.Recv, bad); err != ErrAuth {
				t.Errorf("corrupted frame: %v", err)
			}
			for i, f := range frames[1:] {
				if err := open(e.Recv, f); err != nil {
					t.Errorf("frame %d after a lost one: %v", i+1, err)
				}
			}
			// Another direction (the client's own opener) and another
			// connection (other secrets) refuse the frame.
			c2, _ := testSession(t, s)
			if err := open(c2.Recv, frames[0]); err != ErrAuth {
				t.Errorf("frame opened in the wrong direction: %v", err)
			}
			var other [32]byte
			other[0] = 0xaa
			o := &Opener{newStream(s, &other)}
			if err := open(o, frames[0]); err != ErrAuth {
				t.Errorf("frame opened on another connection: %v", err)
			}
		})
	}
}

// TestNonceUniqueness is a property test: across random mixes of frames,
// resends (the same transaction sealed again), epochs (limits lowered to
// force many key updates) and reconnects (new handshakes), no (key, nonce)
// pair is ever used twice, and a resent transaction never produces the
// same ciphertext.
func TestNonceUniqueness(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range []Suite{AES256GCM, ChaCha20Poly1305} {
		type use struct {
			key   [32]byte
			nonce [12]byte
		}
		seen := map[use]bool{}
		cts := map[string]bool{}
		cfg := Config{Suite: s, Key: newKey(t)}
		for conn := range 8 {
			c, e := handshakePair(t, cfg, cfg, nil, nil)
			if c.err != nil || e.err != nil {
				t.Fatal(c.err, e.err)
			}
			for _, sealer := range []*Sealer{c.sess.Send, e.sess.Send} {
				sealer.st.epochBytes = 1 << 14
				sealer.st.epochFrames = 50
				// Follow the secret chain to know each epoch's key.
				secret := sealer.st.secret
				keys := map[*epoch][32]byte{}
				var last *epoch
				for i := range 400 {
					n := rng.IntN(3000)
					hdr := testHdr(i % 7) // few distinct transactions: resends
					payload := make([]byte, n)
					f, err := sealer.Next(n)
					if err != nil {
						t.Fatal(err)
					}
					if f.ep != last {
						key, _, next := trafficKeys(&secret)
						keys[f.ep] = key
						secret = next
						last = f.ep
					}
					u := use{keys[f.ep], f.nonce}
					if seen[u] {
						t.Fatalf("%v conn %d frame %d: (key, nonce) reused", s, conn, i)
					}
					seen[u] = true
					out := make([]byte, n+16)
					f.SealTo(hdr, payload, out)
					if cts[string(out)] {
						t.Fatalf("%v conn %d frame %d: identical ciphertext for a resend", s, conn, i)
					}
					cts[string(out)] = true
				}
				if sealer.st.epochs < 5 {
					t.Fatalf("only %d epochs", sealer.st.epochs)
				}
			}
		}
	}
}

// TestEpochs: both sides change keys at the same frame, by frame count
// and by bytes.
func TestEpochs(t *testing.T) {
	for _, s := range []Suite{AES256GCM, ChaCha20Poly1305} {
		c, e := testSession(t, s)
		for _, st := range []*stream{&c.Send.st, &e.Recv.st} {
			st.epochBytes, st.epochFrames = 10000, 7
		}
		for i := range 100 {
			n := (i * 1237) % 5000
			body := make([]byte, n+16)
			if err := c.Send.Seal(testHdr(i), body[:n], body[n:]); err != nil {
				t.Fatal(err)
			}
			if err := e.Recv.Open(testHdr(i), body[:n], body[n:]); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		if c.Send.st.epochs != e.Recv.st.epochs || c.Send.st.epochs < 15 {
			t.Fatalf("epochs %d / %d", c.Send.st.epochs, e.Recv.st.epochs)
		}
		// A receiver that does not change keys at the same place fails.
		c, e = testSession(t, s)
		c.Send.st.epochFrames = 2
		for i := range 3 {
			body := make([]byte, 16)
			c.Send.Seal(testHdr(i), nil, body)
			err := e.Recv.Open(testHdr(i), nil, body)
			if (i < 2) != (err == nil) {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
	}
}

func TestExhausted(t *testing.T) {
	c, _ := testSession(t, AES256GCM)
	c.Send.st.seq = math.MaxUint64 - 1
	if _, err := c.Send.Next(0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send.Next(0); err != ErrExhausted {
		t.Fatalf("%v, want ErrExhausted", err)
	}
}

// TestChecksumKnownAnswers: the checksums over header ‖ payload are the
// standard functions.
func TestChecksumKnownAnswers(t *testing.T) {
	tests := []struct {
		s            Suite
		hdr, payload string
		want         string
	}{
		{CRC32C, "1234", "56789", "839206e3"}, // 0xE3069283, little-endian
		{SHA256, "a", "bc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{BLAKE3, "", "", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
	}
	for _, tt := range tests {
		c, _ := testSession(t, tt.s)
		tag := make([]byte, tt.s.TagSize())
		if err := c.Send.Seal([]byte(tt.hdr), []byte(tt.payload), tag); err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(tag); got != tt.want {
			t.Errorf("%v: %s, want %s", tt.s, got, tt.want)
		}
	}
}

// TestMisuse: layout errors are programming errors and panic with a
// message.
func TestMisuse(t *testing.T) {
	c, _ := testSession(t, AES256GCM)
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		f()
	}
	mustPanic("detached AEAD trailer", func() { c.Send.Seal(testHdr(0), make([]byte, 10), make([]byte, 16)) })
	mustPanic("short trailer", func() { c.Send.Seal(testHdr(0), nil, make([]byte, 4)) })
	mustPanic("SealTo size", func() { c.Send.SealTo(testHdr(0), make([]byte, 10), make([]byte, 10)) })
}

// TestHotPathAllocs: sealing and opening allocate nothing, in every form.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under -race")
	}
	for _, s := range allSuites {
		c, e := testSession(t, s)
		tag := s.TagSize()
		hdr := testHdr(1)
		body := make([]byte, 4096+tag)
		out := make([]byte, 4096+tag)
		plain := make([]byte, 4096)
		trailer := make([]byte, tag)
		var job Job
		n := testing.AllocsPerRun(100, func() {
			c.Send.Seal(hdr, body[:4096], body[4096:])
			e.Recv.Open(hdr, body[:4096], body[4096:])
			c.Send.SealTo(hdr, plain, out)
			e.Recv.OpenTo(hdr, out, plain)
			c.Send.Seal(hdr, nil, trailer)
			e.Recv.Open(hdr, nil, trailer)
			job.Frame, _ = c.Send.Next(4096)
			job.Hdr, job.Payload, job.Body, job.Open = hdr, plain, out, false
			job.run()
			job.Frame, _ = e.Recv.Next(4096)
			job.Open = true
			job.run()
		})
		if n != 0 {
			t.Errorf("%v: %.1f allocations per frame set", s, n)
		}
	}
}
