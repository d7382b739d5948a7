package export_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
)

func key(seed byte) *crypto.Key {
	var k crypto.Key
	for i := range k {
		k[i] = seed ^ byte(i*13+5)
	}
	return &k
}

// cryptoClient is a raw client that speaks PROTOCOL.md §8 by hand: the
// crypto handshake on an exporttest.Client, then sealed frames.
type cryptoClient struct {
	*exporttest.Client
	cs *crypto.Session
}

type rw struct {
	io.Reader
	io.Writer
}

// handshake runs HELLO / WELCOME / FINISHED with cfg on c. The error is the
// handshake's (REFUSE, key mismatch).
func handshake(t *testing.T, c *exporttest.Client, cfg crypto.Config, h *wire.Hello) (*cryptoClient, error) {
	t.Helper()
	hs, err := crypto.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.Crypto, h.TagSize = hs.HelloAttr(), hs.TagSize()
	var rec bytes.Buffer
	if err := wire.WriteHello(io.MultiWriter(c.Conn, &rec), h); err != nil {
		t.Fatal(err)
	}
	if err := hs.Hello(rec.Bytes()); err != nil {
		t.Fatal(err)
	}
	rec.Reset()
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.Conn.SetReadDeadline(time.Time{})
	w, err := wire.ReadWelcome(io.TeeReader(c.R, &rec))
	if err != nil {
		return nil, err
	}
	c.Welcome = w
	if err := hs.Welcome(rec.Bytes()); err != nil {
		return nil, err
	}
	cs, err := hs.Finish(rw{c.R, c.Conn})
	if err != nil {
		return nil, err
	}
	return &cryptoClient{c, cs}, nil
}

// do sends one sealed request and returns its reply, opened.
func (c *cryptoClient) do(t *testing.T, r wire.Request, payload []byte) (wire.Reply, []byte) {
	t.Helper()
	tag := c.cs.Send.TagSize()
	b := make([]byte, wire.RequestHeaderSize+len(payload)+tag)
	r.Put(b)
	if err := c.cs.Send.SealTo(b[:wire.RequestHeaderSize], payload, b[wire.RequestHeaderSize:]); err != nil {
		t.Fatal(err)
	}
	if err := c.SendRaw(b); err != nil {
		t.Fatal(err)
	}
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.Conn.SetReadDeadline(time.Time{})
	var hb [wire.ReplyHeaderSize]byte
	if _, err := io.ReadFull(c.R, hb[:]); err != nil {
		t.Fatalf("%v id %d: reading the reply: %v", r.Op, r.ID, err)
	}
	rep, err := wire.ParseReply(hb[:])
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, rep.PayloadLen()+tag)
	if _, err := io.ReadFull(c.R, body); err != nil {
		t.Fatal(err)
	}
	out := body[:rep.PayloadLen()]
	if err := c.cs.Recv.OpenTo(hb[:], body, out); err != nil {
		t.Fatalf("reply to %v id %d does not open: %v", r.Op, r.ID, err)
	}
	if rep.ID != r.ID || rep.Op != r.Op {
		t.Fatalf("reply %v id %d, want %v id %d", rep.Op, rep.ID, r.Op, r.ID)
	}
	return rep, out
}

// TestCryptoSessionOnlyAfterFinished: a peer with a sniffed session token
// but not the key gets a WELCOME and the exporter's FINISHED, fails the
// key confirmation, and changes nothing: the request it sends behind its
// forged FINISHED is not read, nothing is written, and the session's
// current connection is not fenced (PROTOCOL.md §8.3 step 5).
func TestCryptoSessionOnlyAfterFinished(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Crypto = crypto.Config{Suite: crypto.AES256GCM, Key: key(1)}
	log, logs := exporttest.ObservedLogger(t)
	cfg.Log = log
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)

	good, err := handshake(t, exporttest.Dial(t, addr), cfg.Crypto, &wire.Hello{Export: "disk", Features: exporttest.AllFeatures})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(bs, 1)
	if rep, _ := good.do(t, wire.Request{Op: wire.OpWrite, ID: 1, Offset: 0, Length: bs, Floor: 1}, data); rep.Status != 0 {
		t.Fatalf("write: %v", rep.Status)
	}

	// The attacker: the right suite, the stolen token, another key.
	bad := exporttest.Dial(t, addr)
	hs, err := crypto.NewClient(crypto.Config{Suite: crypto.AES256GCM, Key: key(2)})
	if err != nil {
		t.Fatal(err)
	}
	h := &wire.Hello{Export: "disk", Features: exporttest.AllFeatures, Session: good.Welcome.Session, HasSession: true,
		Crypto: hs.HelloAttr(), TagSize: hs.TagSize()}
	if err := wire.WriteHello(bad.Conn, h); err != nil {
		t.Fatal(err)
	}
	w, err := wire.ReadWelcome(bad.R)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crypto.ReadFinished(bad.R); err != nil {
		t.Fatalf("exporter's FINISHED: %v", err)
	}
	// A forged FINISHED (any CONFIRM), then a WRITE over block 1.
	var fin bytes.Buffer
	fin.Write([]byte("DSTH"))
	binary.Write(&fin, binary.LittleEndian, w.Version)
	fin.Write([]byte{byte(crypto.MsgFinished), 0})
	binary.Write(&fin, binary.LittleEndian, uint32(36))
	binary.Write(&fin, binary.LittleEndian, crypto.AttrConfirm)
	binary.Write(&fin, binary.LittleEndian, uint16(32))
	fin.Write(make([]byte, 32))
	req := make([]byte, wire.RequestHeaderSize+bs+16)
	wr := wire.Request{Op: wire.OpWrite, ID: 2, Offset: bs, Length: bs, Floor: 2}
	wr.Put(req)
	copy(req[wire.RequestHeaderSize:], pattern(bs, 2))
	if err := bad.SendRaw(append(fin.Bytes(), req...)); err != nil {
		t.Fatal(err)
	}
	_, err = crypto.ReadFinished(bad.R) // the REFUSE comes where a FINISHED would
	var re *wire.RefuseError
	if !errors.As(err, &re) || re.Code != wire.RefuseAccessDenied || !strings.Contains(re.Reason, "the client does not hold this exporter's key") {
		t.Fatalf("after a forged FINISHED: %v, want REFUSE ACCESS_DENIED about the key", err)
	}
	bad.ExpectClosed(5 * time.Second)
	exporttest.WaitLog(t, logs, "handshake failed", 2*time.Second)
	if st := srv.CryptoStats(); st.Refused != 1 {
		t.Fatalf("crypto stats %+v, want one refusal", st)
	}

	// The session still lives on the good connection, and block 1 was
	// never written.
	if rep, got := good.do(t, wire.Request{Op: wire.OpRead, ID: 3, Offset: 0, Length: 2 * bs, Floor: 3}, nil); rep.Status != 0 ||
		!bytes.Equal(got[:bs], data) || !bytes.Equal(got[bs:], make([]byte, bs)) {
		t.Fatalf("read after the attack: status %v, block 0 intact %v, block 1 zero %v", rep.Status, bytes.Equal(got[:bs], data), bytes.Equal(got[bs:], make([]byte, bs)))
	}
	if n := logs.FilterMessage("fenced the session's previous connection").Len(); n != 0 {
		t.Fatal("the session's connection was fenced by a peer without the key")
	}
	if !bytes.Equal(fileAt(t, path, bs, bs), make([]byte, bs)) {
		t.Fatal("the attacker's write reached the export")
	}
}

// TestCryptoResumeAfterFinished: with the key, a resume fences the old
// connection and the session goes on (the WELCOME's token and RESUMED are
// those of the session attached after FINISHED).
func TestCryptoResumeAfterFinished(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Crypto = crypto.Config{Suite: crypto.ChaCha20Poly1305, Key: key(3)}
	_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	first, err := handshake(t, exporttest.Dial(t, addr), cfg.Crypto, &wire.Hello{Export: "disk", Features: exporttest.AllFeatures})
	if err != nil {
		t.Fatal(err)
	}
	if first.Welcome.Resumed {
		t.Fatal("a new session says RESUMED")
	}
	data := pattern(3*bs, 4)
	first.do(t, wire.Request{Op: wire.OpWrite, ID: 1, Length: 3 * bs, Floor: 1}, data)
	second, err := handshake(t, exporttest.Dial(t, addr), cfg.Crypto,
		&wire.Hello{Export: "disk", Features: exporttest.AllFeatures, Session: first.Welcome.Session, HasSession: true})
	if err != nil {
		t.Fatal(err)
	}
	if !second.Welcome.Resumed || second.Welcome.Session != first.Welcome.Session {
		t.Fatalf("resume: RESUMED %v, same token %v", second.Welcome.Resumed, second.Welcome.Session == first.Welcome.Session)
	}
	first.ExpectClosed(5 * time.Second)
	// The write of id 1 is done: a resend is answered from the record.
	if rep, _ := second.do(t, wire.Request{Op: wire.OpWrite, ID: 1, Length: 3 * bs, Floor: 1}, data); rep.Status != 0 {
		t.Fatalf("resent write: %v", rep.Status)
	}
	if _, got := second.do(t, wire.Request{Op: wire.OpRead, ID: 2, Length: 3 * bs, Floor: 2}, nil); !bytes.Equal(got, data) {
		t.Fatal("read back on the resumed session differs")
	}
}

// TestCryptoCorruptRequest: under a checksum suite a request
// whose trailer does not match is dropped (not executed, not answered)
// and counted, and the connection goes on; under AEAD the connection is
// closed.
func TestCryptoCorruptRequest(t *testing.T) {
	for _, s := range []crypto.Suite{crypto.CRC32C, crypto.AES256GCM} {
		t.Run(s.String(), func(t *testing.T) {
			path := exporttest.File(t, testSize)
			cfg := config(path)
			cfg.Crypto = crypto.Config{Suite: s}
			if s.Keyed() {
				cfg.Crypto.Key = key(5)
			}
			srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			c, err := handshake(t, exporttest.Dial(t, addr), cfg.Crypto, &wire.Hello{Export: "disk", Features: exporttest.AllFeatures})
			if err != nil {
				t.Fatal(err)
			}
			tag := s.TagSize()
			b := make([]byte, wire.RequestHeaderSize+bs+tag)
			wr := wire.Request{Op: wire.OpWrite, ID: 1, Length: bs, Floor: 1}
			wr.Put(b)
			copy(b[wire.RequestHeaderSize:], pattern(bs, 6))
			if err := c.cs.Send.SealTo(b[:wire.RequestHeaderSize], pattern(bs, 6), b[wire.RequestHeaderSize:]); err != nil {
				t.Fatal(err)
			}
			b[wire.RequestHeaderSize+100] ^= 4 // a bit of the payload, after sealing
			if err := c.SendRaw(b); err != nil {
				t.Fatal(err)
			}
			if s.Keyed() {
				c.ExpectClosed(5 * time.Second)
				if st := srv.CryptoStats(); st.Auth != 1 || st.Corrupt != 0 {
					t.Fatalf("crypto stats %+v, want one authentication failure", st)
				}
			} else {
				// The next frame (a read of the same block) is answered;
				// the dropped write never was.
				rep, got := c.do(t, wire.Request{Op: wire.OpRead, ID: 2, Length: bs, Floor: 1}, nil)
				if rep.Status != 0 || !bytes.Equal(got, make([]byte, bs)) {
					t.Fatalf("read after a corrupted write: %v, zero %v", rep.Status, bytes.Equal(got, make([]byte, bs)))
				}
				if st := srv.CryptoStats(); st.Corrupt != 1 || st.Auth != 0 {
					t.Fatalf("crypto stats %+v, want one checksum drop", st)
				}
			}
			if !bytes.Equal(fileAt(t, path, 0, bs), make([]byte, bs)) {
				t.Fatal("a corrupted write reached the export")
			}
		})
	}
}
