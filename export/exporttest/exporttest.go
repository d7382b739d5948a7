// Package exporttest helps test the exporter and its clients: it starts
// an export.Server on any transport, creates backing files, and provides
// Client, a raw protocol client that speaks frames directly (any header,
// any bytes) so that tests can send what a real client never would.
//
// It is for tests only; no production code imports it.
package exporttest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// Listen URLs for Start.
const (
	TCP4 = "dst://127.0.0.1:0"
	TCP6 = "dst://[::1]:0"
)

// UnixURL returns a listen URL for a Unix socket in a test directory.
func UnixURL(t testing.TB) string {
	t.Helper()
	// Socket paths are limited to 108 bytes; t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "dst-export-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return "dst+unix://" + filepath.Join(dir, "s.sock")
}

var memSeq atomic.Uint64

// MemURL returns a listen URL for the in-process mem transport, with a
// name of its own.
func MemURL(t testing.TB) string {
	t.Helper()
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, t.Name())
	return fmt.Sprintf("dst+mem://%s-%d", name, memSeq.Add(1))
}

// Transport is a listen URL with a name, for table tests.
type Transport struct {
	Name string
	URL  string
}

// Transports returns tcp4, tcp6 (when [::1] can be listened on), unix
// and mem.
func Transports(t testing.TB) []Transport {
	t.Helper()
	ts := []Transport{{"tcp4", TCP4}}
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		ts = append(ts, Transport{"tcp6", TCP6})
	} else {
		t.Logf("no tcp6: [::1] unusable: %v", err)
	}
	return append(ts, Transport{"unix", UnixURL(t)}, Transport{"mem", MemURL(t)})
}

// File creates a file of size bytes in t.TempDir(), allocated and reading
// as zeroes (fallocate), suitable for O_DIRECT.
func File(t testing.TB, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "export.img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// Start creates a Server from cfg (its Log defaults to the test log) and
// serves it on listenURL (see TCP4, TCP6, UnixURL, MemURL). It returns the
// server and the URL to dial (the listen URL with the real port). The
// server is shut down at cleanup.
func Start(t testing.TB, cfg export.Config, listenURL string) (*export.Server, string) {
	t.Helper()
	l, u, err := transport.Listen(context.Background(), listenURL, transport.Options{})
	if err != nil {
		t.Fatalf("listen %s: %v", listenURL, err)
	}
	s := StartListener(t, cfg, l)
	return s, u.String()
}

// StartListener is Start on a listener of the caller's (a wrapped one, for
// example). It returns the server; l.Addr() says where it listens.
func StartListener(t testing.TB, cfg export.Config, l net.Listener) *export.Server {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = TestLogger(t)
	}
	s, err := export.New(cfg)
	if err != nil {
		l.Close()
		t.Fatalf("export.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil && !errors.Is(err, export.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// Client is a raw protocol client on one connection. Its methods fail the
// test (the one it was made for, see For) only where they say so; the
// others return errors, so that a test can expect them. A Client is not
// safe for concurrent use, except that one goroutine may send while
// another receives.
type Client struct {
	t       testing.TB
	Conn    net.Conn
	R       *bufio.Reader
	Welcome *wire.Welcome
	// Timeout bounds every Recv (default 10 s).
	Timeout time.Duration
	hdr     [wire.ReplyHeaderSize]byte
}

// For returns a Client on the same connection that reports failures to
// t: use it in a subtest, which must not fail its parent.
func (c *Client) For(t testing.TB) *Client {
	d := &Client{t: t, Conn: c.Conn, R: c.R, Welcome: c.Welcome, Timeout: c.Timeout}
	return d
}

// Dial connects to addr (a URL as Start returns it) without a handshake.
// It fails the test if the dial fails. The connection is closed at
// cleanup.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	nc, _, err := transport.Dial(context.Background(), addr, transport.Options{DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return NewClient(t, nc)
}

// NewClient wraps a connection (closed at cleanup).
func NewClient(t testing.TB, nc net.Conn) *Client {
	c := &Client{t: t, Conn: nc, R: bufio.NewReaderSize(nc, 256<<10), Timeout: 10 * time.Second}
	t.Cleanup(func() { nc.Close() })
	return c
}

// AllFeatures is every feature bit of version 1.
const AllFeatures = wire.KnownFeatures

// Hello sends h and reads the answer: the WELCOME (also kept in
// c.Welcome) or an error (a *wire.RefuseError for a REFUSE).
func (c *Client) Hello(h *wire.Hello) (*wire.Welcome, error) {
	if err := wire.WriteHello(c.Conn, h); err != nil {
		return nil, err
	}
	c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
	w, err := wire.ReadWelcome(c.R)
	c.Conn.SetReadDeadline(time.Time{})
	if err == nil {
		c.Welcome = w
	}
	return w, err
}

// Connect dials addr and handshakes for export with every feature; it
// fails the test on error.
func Connect(t testing.TB, addr, exportName string) *Client {
	t.Helper()
	c := Dial(t, addr)
	if _, err := c.Hello(&wire.Hello{Export: exportName, Features: AllFeatures, ClientName: "exporttest"}); err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	return c
}

// Resume dials addr and resumes the session of token; it fails the test on
// error.
func Resume(t testing.TB, addr, exportName string, token wire.Token) *Client {
	t.Helper()
	c := Dial(t, addr)
	if _, err := c.Hello(&wire.Hello{Export: exportName, Features: AllFeatures, Session: token, HasSession: true}); err != nil {
		t.Fatalf("resume with %s: %v", addr, err)
	}
	return c
}

// Send writes a request header and its payload (for any op: a test may
// send a payload the header does not announce) with one Write.
func (c *Client) Send(r wire.Request, payload []byte) error {
	b := make([]byte, wire.RequestHeaderSize+len(payload))
	r.Put(b)
	copy(b[wire.RequestHeaderSize:], payload)
	return c.SendRaw(b)
}

// SendRaw writes b as is.
func (c *Client) SendRaw(b []byte) error {
	_, err := c.Conn.Write(b)
	return err
}

// Recv reads one reply and its payload (Length bytes; nil when 0).
func (c *Client) Recv() (wire.Reply, []byte, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
	defer c.Conn.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(c.R, c.hdr[:]); err != nil {
		return wire.Reply{}, nil, err
	}
	r, err := wire.ParseReply(c.hdr[:])
	if err != nil {
		return r, nil, err
	}
	if r.Length == 0 {
		return r, nil, nil
	}
	p := make([]byte, r.Length)
	if _, err := io.ReadFull(c.R, p); err != nil {
		return r, nil, fmt.Errorf("reply payload: %w", err)
	}
	return r, p, nil
}

// Do sends r and returns the next reply, which must be r's.
func (c *Client) Do(r wire.Request, payload []byte) (wire.Reply, []byte, error) {
	if err := c.Send(r, payload); err != nil {
		return wire.Reply{}, nil, err
	}
	rep, p, err := c.Recv()
	if err != nil {
		return rep, p, err
	}
	if rep.ID != r.ID || rep.Op != r.Op {
		return rep, p, fmt.Errorf("reply %v id %d, want %v id %d", rep.Op, rep.ID, r.Op, r.ID)
	}
	return rep, p, nil
}

// MustDo is Do that fails the test on error or on a status other than want.
func (c *Client) MustDo(r wire.Request, payload []byte, want wire.Status) []byte {
	c.t.Helper()
	rep, p, err := c.Do(r, payload)
	if err != nil {
		c.t.Fatalf("%v id %d: %v", r.Op, r.ID, err)
	}
	if rep.Status != want {
		c.t.Fatalf("%v id %d at %d+%d: status %v, want %v", r.Op, r.ID, r.Offset, r.Length, rep.Status, want)
	}
	return p
}

// Ping sends a PING and waits for its reply, skipping (and returning)
// the replies that come before it.
func (c *Client) Ping(id uint64) ([]wire.Reply, error) {
	if err := c.Send(wire.Request{Op: wire.OpPing, ID: id}, nil); err != nil {
		return nil, err
	}
	var before []wire.Reply
	for {
		r, _, err := c.Recv()
		if err != nil {
			return before, err
		}
		if r.Op == wire.OpPing && r.ID == id {
			return before, nil
		}
		before = append(before, r)
	}
}

// ExpectClosed reads until the exporter closes the connection, discarding
// what comes, and fails the test if that does not happen within d.
func (c *Client) ExpectClosed(d time.Duration) {
	c.t.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c.R)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %v", d)
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// TestLogger returns a logger that writes to the test log (info and
// above; set DST_TEST_DEBUG=1 for debug lines too).
func TestLogger(t testing.TB) *zap.Logger {
	lvl := zap.InfoLevel
	if os.Getenv("DST_TEST_DEBUG") != "" {
		lvl = zap.DebugLevel
	}
	return zaptest.NewLogger(t, zaptest.Level(lvl))
}

// ObservedLogger returns a logger that writes to the test log and also
// records every entry (debug and above) for the test to inspect.
func ObservedLogger(t testing.TB) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	l := TestLogger(t)
	return zap.New(zapcore.NewTee(l.Core(), core)), logs
}

// WaitLog waits until an entry whose message contains msg has been
// logged, and returns it; it fails the test after d.
func WaitLog(t testing.TB, logs *observer.ObservedLogs, msg string, d time.Duration) observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		for _, e := range logs.All() {
			if strings.Contains(e.Message, msg) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log entry %q after %v", msg, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
