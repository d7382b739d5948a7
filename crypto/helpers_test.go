package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dst-dev/dst/internal/wire"
)

// attr encodes one handshake attribute.
func attr(t uint16, v []byte) []byte {
	b := binary.LittleEndian.AppendUint16(nil, t)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

func u8(v uint8) []byte   { return []byte{v} }
func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// buildMsg encodes a handshake message of version 1.
func buildMsg(t wire.MsgType, body ...[]byte) []byte {
	b := []byte("DSTH")
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = append(b, byte(t), 0)
	all := bytes.Join(body, nil)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(all)))
	return append(b, all...)
}

// testHello is the HELLO of the tests (and of kat.py): export "kat",
// features 0x1f, TAG_SIZE and CRYPTO as the handshake says.
func testHello(crypto []byte, tagSize uint8) []byte {
	parts := [][]byte{attr(wire.AttrHelloExportName, []byte("kat")), attr(wire.AttrHelloFeatures, u64(0x1f))}
	if tagSize != 0 {
		parts = append(parts, attr(wire.AttrHelloTagSize, u8(tagSize)))
	}
	if crypto != nil {
		parts = append(parts, attr(AttrHelloCrypto, crypto))
	}
	return buildMsg(wire.MsgHello, parts...)
}

// testWelcome is the WELCOME of the tests (and of kat.py).
func testWelcome(crypto []byte, tagSize uint8) []byte {
	parts := [][]byte{
		attr(wire.AttrWelcomeSession, bytes.Repeat([]byte{0xee}, 16)),
		attr(wire.AttrWelcomeExportSize, u64(1<<20)),
		attr(wire.AttrWelcomeLogicalBlock, u32(4096)),
		attr(wire.AttrWelcomeMaxTransfer, u32(1<<20)),
		attr(wire.AttrWelcomeFeatures, u64(0x1f)),
		attr(wire.AttrWelcomeMaxInflight, u32(1024)),
	}
	if tagSize != 0 {
		parts = append(parts, attr(wire.AttrWelcomeTagSize, u8(tagSize)))
	}
	if crypto != nil {
		parts = append(parts, attr(AttrWelcomeCrypto, crypto))
	}
	return buildMsg(wire.MsgWelcome, parts...)
}

// readMsg reads one raw handshake message (header and body).
func readMsg(r io.Reader) ([]byte, error) {
	hb := make([]byte, wire.HandshakeHeaderSize)
	if _, err := io.ReadFull(r, hb); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(hb[8:12])
	if n > wire.MaxHandshakeBody {
		return nil, fmt.Errorf("body length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(hb, body...), nil
}

// clientSide runs the client's handshake as txn would: HELLO, WELCOME (or
// REFUSE), Finish.
func clientSide(conn net.Conn, cfg Config) (*Session, error) {
	hs, err := NewClient(cfg)
	if err != nil {
		return nil, err
	}
	hello := testHello(hs.HelloAttr(), hs.TagSize())
	if _, err := conn.Write(hello); err != nil {
		return nil, err
	}
	if err := hs.Hello(hello); err != nil {
		return nil, err
	}
	msg, err := readMsg(conn)
	if err != nil {
		return nil, fmt.Errorf("reading WELCOME: %w", err)
	}
	if wire.MsgType(msg[6]) == wire.MsgRefuse {
		_, err := wire.ReadWelcome(bytes.NewReader(msg)) // decodes the REFUSE
		return nil, err
	}
	if err := hs.Welcome(msg); err != nil {
		return nil, err
	}
	return hs.Finish(conn)
}

// serverSide runs the exporter's handshake as export would.
func serverSide(conn net.Conn, cfg Config) (*Session, error) {
	hs, err := NewServer(cfg)
	if err != nil {
		return nil, err
	}
	hello, err := readMsg(conn)
	if err != nil {
		return nil, fmt.Errorf("reading HELLO: %w", err)
	}
	if err := hs.Hello(hello); err != nil {
		var he *wire.HandshakeError
		if errors.As(err, &he) {
			wire.WriteRefuse(conn, he.Refuse())
		}
		return nil, err
	}
	welcome := testWelcome(hs.WelcomeAttr(), hs.TagSize())
	if _, err := conn.Write(welcome); err != nil {
		return nil, err
	}
	if err := hs.Welcome(welcome); err != nil {
		return nil, err
	}
	return hs.Finish(conn)
}

// tcpPair returns both ends of a loopback TCP connection (kernel buffers,
// like a real link: a write does not wait for the peer to read).
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// handshakeDeadline bounds a test handshake (tamper tests lower it: a
// flipped length byte makes a side wait for bytes that never come).
var handshakeDeadline = 5 * time.Second

type result struct {
	sess *Session
	err  error
}

// handshakePair runs both sides concurrently; wrapC/wrapS may wrap the
// client's and the exporter's connection (to tamper with what they write).
// Each side closes its connection when it fails, as the real ones do.
func handshakePair(t testing.TB, ccfg, scfg Config, wrapC, wrapS func(net.Conn) net.Conn) (c, s result) {
	t.Helper()
	cc, sc := tcpPair(t)
	dl := time.Now().Add(handshakeDeadline)
	cc.SetDeadline(dl)
	sc.SetDeadline(dl)
	var cw, sw net.Conn = cc, sc
	if wrapC != nil {
		cw = wrapC(cc)
	}
	if wrapS != nil {
		sw = wrapS(sc)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.sess, c.err = clientSide(cw, ccfg)
		if c.err != nil {
			cc.Close()
		}
	}()
	go func() {
		defer wg.Done()
		s.sess, s.err = serverSide(sw, scfg)
		if s.err != nil {
			sc.Close()
		}
	}()
	wg.Wait()
	return c, s
}

// flipConn flips byte at (0-based, across writes) of what is written.
type flipConn struct {
	net.Conn
	at, off int
}

func (f *flipConn) Write(b []byte) (int, error) {
	if f.at >= f.off && f.at < f.off+len(b) {
		b = bytes.Clone(b)
		b[f.at-f.off] ^= 0x01
	}
	f.off += len(b)
	return f.Conn.Write(b)
}

// checkNoLeak fails if goroutines started during the test are still
// running a little after it ends.
func checkNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var n int
		for range 200 {
			n = runtime.NumGoroutine()
			if n <= before {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		buf := make([]byte, 1<<16)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
	})
}

// fixedRand returns a reader that yields b, then fails.
func fixedRand(b ...[]byte) io.Reader { return bytes.NewReader(bytes.Join(b, nil)) }

func seqBytes(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

func mustContain(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %v, want one containing %q", what, err, want)
	}
}
