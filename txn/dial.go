package txn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// Options configure a connection to an export.
type Options struct {
	URL       string
	Transport transport.Options
	// Tick is the engine's clock resolution (default 100ms).
	Tick time.Duration
	// Timeout, Retries, Ping: see Config; defaults 10s, 6, 2s.
	Timeout time.Duration
	Retries int
	Ping    time.Duration
	// BackoffMax caps the delay between reconnect attempts (default 2s).
	BackoffMax time.Duration
	// Capacity: transactions in flight at most per connection (default
	// 1024); size it above the queue depth.
	Capacity int
	ReadOnly bool   // ask for a read-only session
	Name     string // client name sent to the exporter (default hostname)
	// HandshakeTimeout bounds dial + handshake (default: Timeout, at
	// least 1s and at most 10s). The handshake has no checksum: a
	// corrupted HELLO or WELCOME is only noticed by this timeout, and a
	// stall longer than a request's timeout would eat its retries.
	HandshakeTimeout time.Duration
	Log              *zap.Logger
	// OnState is called when a connection's state changes (from the
	// goroutine that drives it).
	OnState func(ConnState)

	// Recovery (dst recover). FirstID: see Config.FirstID. Sessions[i] is
	// the session token queue i resumes (the first connection, made by
	// DialTarget, is queue 0's); a zero or missing token starts a new
	// session.
	FirstID  uint64
	Sessions []wire.Token
	// OnSession is called with a queue's session token whenever its
	// connection comes up with a token the queue did not hold yet (a new
	// session), before any request is sent on it, from the goroutine that
	// drives the queue: whoever must resume the session after a crash
	// stores the token here (it is a bearer credential).
	OnSession func(queue int, token wire.Token)

	// Crypto protects the frames (PROTOCOL.md §8): Suite None (the
	// default) sends none; a checksum suite adds a checksum trailer to
	// every frame; an AEAD suite needs Key and encrypts the payloads after
	// a handshake that proves both sides hold it. The exporter must be
	// configured with the same suite (and key), or the handshake fails.
	// Crypto.Rand is for tests.
	Crypto crypto.Config
	// CryptoPool, if set, seals WRITE payloads above crypto.DefaultInline
	// on its workers, in parallel, while the ring's thread waits before the
	// WRITEV; nil seals everything on the ring's thread. Shared by every
	// queue of a Target; the caller closes it after the Client or Target.
	CryptoPool *crypto.Pool

	// onSeal: see Conn.onSeal (tests).
	onSeal func(cs *crypto.Session, seq uint64, hdr []byte)
}

func (o *Options) defaults() {
	if o.Tick <= 0 {
		o.Tick = 100 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.Ping <= 0 {
		o.Ping = 2 * time.Second
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 2 * time.Second
	}
	if o.Capacity <= 0 {
		o.Capacity = 1024
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = min(max(o.Timeout, time.Second), 10*time.Second)
	}
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
}

func ticks(d, tick time.Duration) uint64 { return uint64(max(1, (d+tick-1)/tick)) }

func (o *Options) engineConfig() Config {
	return Config{
		Capacity:   o.Capacity,
		Timeout:    ticks(o.Timeout, o.Tick),
		Retries:    o.Retries,
		Ping:       ticks(o.Ping, o.Tick),
		BackoffMin: 1,
		BackoffMax: ticks(o.BackoffMax, o.Tick),
		FirstID:    o.FirstID,
		NoSession:  nbd.IsURL(o.URL),
	}
}

// dialer connects and negotiates; it checks every later WELCOME against
// the first one, which fixed the device's geometry.
type dialer struct {
	opts  Options
	url   *transport.URL
	first *wire.Welcome
	// nbd is set when the URL names an NBD server (nbd.go): the
	// connections speak NBD instead of the DST protocol.
	nbd *nbd.URL
}

func newDialer(opts Options) (*dialer, error) {
	opts.defaults()
	if nbd.IsURL(opts.URL) {
		return newNBDDialer(opts)
	}
	u, err := transport.ParseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	if u.Export == "" {
		return nil, fmt.Errorf("URL %s names no export: add /EXPORT (or ?export=NAME for unix sockets)", u)
	}
	if u.Transport == "mem" {
		return nil, fmt.Errorf("URL %s: the client drives its socket with io_uring and needs tcp or unix, not the in-memory transport", u)
	}
	return &dialer{opts: opts, url: u}, nil
}

// resume is the session token queue i starts with (zero: a new session).
func (d *dialer) resume(i int) wire.Token {
	if i < len(d.opts.Sessions) {
		return d.opts.Sessions[i]
	}
	return wire.Token{}
}

// link is a negotiated connection: the socket, the exporter's WELCOME and
// the protection of its frames (PROTOCOL.md §8).
type link struct {
	nc net.Conn
	w  *wire.Welcome
	cs *crypto.Session
	// nbdFlags: what an NBD server announced (NBD mode only).
	nbdFlags nbd.TransmissionFlags
}

// handshake dials and negotiates one connection, resuming session if it
// is not zero. With crypto, the HELLO and WELCOME are recorded as they go
// over the wire (the transcript of PROTOCOL.md §8.3) and a keyed suite
// exchanges FINISHED messages before the connection is handed over; a
// refusal or a failed check closes the connection with nothing read or
// written beyond the handshake.
func (d *dialer) handshake(ctx context.Context, session wire.Token) (*link, error) {
	if d.nbd != nil {
		return d.nbdHandshake(ctx)
	}
	hs, err := crypto.NewClient(d.opts.Crypto)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.HandshakeTimeout)
	defer cancel()
	conn, err := transport.DialURL(ctx, d.url, d.opts.Transport)
	if err != nil {
		return nil, err
	}
	// The handshake may block; the context bounds it through the deadline
	// and by closing the connection when it is cancelled.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	h := &wire.Hello{
		Version:      wire.Version,
		Export:       d.url.Export,
		Features:     wire.FeatFlush | wire.FeatFUA | wire.FeatDiscard | wire.FeatWriteZeroes | wire.FeatResume,
		WantReadOnly: d.opts.ReadOnly,
		ClientName:   d.opts.Name,
		MaxInflight:  uint32(min(d.opts.Capacity, wire.MaxInflightLimit)),
		Crypto:       hs.HelloAttr(),
		TagSize:      hs.TagSize(),
	}
	if !session.IsZero() {
		h.Session, h.HasSession = session, true
	}
	var rec bytes.Buffer
	if err := wire.WriteHello(io.MultiWriter(conn, &rec), h); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", d.url, err)
	}
	if err := hs.Hello(rec.Bytes()); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", d.url, err)
	}
	rec.Reset()
	w, err := wire.ReadWelcome(io.TeeReader(conn, &rec))
	if err != nil {
		conn.Close()
		var re *wire.RefuseError
		if errors.As(err, &re) {
			return nil, err
		}
		return nil, fmt.Errorf("handshake with %s: %w", d.url, err)
	}
	if err := hs.Welcome(rec.Bytes()); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", d.url, err)
	}
	cs, err := hs.Finish(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", d.url, err)
	}
	if err := d.checkSame(w); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &link{nc: conn, w: w, cs: cs}, nil
}

// checkSame checks a later connection's export against the first one,
// which fixed the device's geometry.
func (d *dialer) checkSame(w *wire.Welcome) error {
	first := d.first
	if first == nil {
		return nil
	}
	if w.Size != first.Size || w.LogicalBlock != first.LogicalBlock || w.ReadOnly && !first.ReadOnly {
		return &changedError{fmt.Sprintf("export %s changed: size %d -> %d, block %d -> %d, read-only %v -> %v",
			d.url.Export, first.Size, w.Size, first.LogicalBlock, w.LogicalBlock, first.ReadOnly, w.ReadOnly)}
	}
	return nil
}

// changedError: the export is no longer the device we created.
type changedError struct{ msg string }

func (e *changedError) Error() string { return e.msg }
