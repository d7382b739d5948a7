package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"time"
)

// DefaultKeepAlive is the TCP keep-alive period used when
// Options.KeepAlive is zero.
const DefaultKeepAlive = 15 * time.Second

// KeepAliveProbes is the number of unanswered keep-alive probes after which
// the kernel declares a TCP connection dead. With period P a silent peer is
// detected after about P (idle) + KeepAliveProbes*P (probes).
const KeepAliveProbes = 3

// Options tunes the connections a transport makes. The zero value is the
// recommended setting. Options that do not apply to a transport are ignored
// by it (for example KeepAlive by unix and mem).
//
// A URL's query can override them: nodelay=false, keepalive=5s|off,
// sndbuf=N, rcvbuf=N, timeout=2s (see ParseURL).
type Options struct {
	// DisableNoDelay turns Nagle's algorithm back on. By default
	// TCP_NODELAY is set: the protocol pipelines small request headers and
	// must not wait for ACKs to send them.
	DisableNoDelay bool
	// KeepAlive is the TCP keep-alive period: the idle time before the
	// first probe and the interval between probes (see KeepAliveProbes).
	// Zero means DefaultKeepAlive; a negative value turns keep-alive off.
	KeepAlive time.Duration
	// SendBuffer and RecvBuffer set SO_SNDBUF and SO_RCVBUF (bytes) when
	// positive; zero keeps the kernel's default (and its auto-tuning). For
	// mem they are the sizes of the ring buffers (default MemBufferSize).
	SendBuffer, RecvBuffer int
	// DialTimeout bounds Dial, on top of the context's own deadline. Zero
	// means no bound other than the context.
	DialTimeout time.Duration
}

// keepAlive returns the effective keep-alive period, <0 when it is off.
func (o Options) keepAlive() time.Duration {
	if o.KeepAlive == 0 {
		return DefaultKeepAlive
	}
	return o.KeepAlive
}

// keepAliveConfig returns the net.KeepAliveConfig for o and the value for the
// legacy KeepAlive field of net.Dialer / net.ListenConfig.
func (o Options) keepAliveConfig() (net.KeepAliveConfig, time.Duration) {
	p := o.keepAlive()
	if p < 0 {
		return net.KeepAliveConfig{Enable: false}, -1
	}
	return net.KeepAliveConfig{Enable: true, Idle: p, Interval: p, Count: KeepAliveProbes}, p
}

// A Transport moves bytes between a client and an exporter. Each transport
// lives in one file of this package (tcp.go, unix.go, mem.go) and registers
// itself from that file's init function; see the package documentation.
//
// Implementations must be safe for concurrent use.
type Transport interface {
	// Name returns the transport's name, as stored in URL.Transport:
	// "tcp", "unix", "mem". It is unique among registered transports.
	Name() string

	// Schemes returns the URL schemes this transport serves, such as
	// "dst" or "dst+unix". A scheme belongs to exactly one transport.
	Schemes() []string

	// Dial connects to the listener at u.Address, applying o. It must
	// return when ctx is done (with an error wrapping ctx.Err() or a
	// timeout error), and must not leave goroutines behind. The returned
	// conn is the transport's own type (*net.TCPConn, *net.UnixConn), not
	// a wrapper, so that net.Buffers.WriteTo can use writev. A URL that is
	// well formed but cannot be dialled (such as port 0) gives a *URLError.
	// The caller (DialURL) has already applied o.DialTimeout to ctx and
	// wraps the error with the URL.
	Dial(ctx context.Context, u *URL, o Options) (net.Conn, error)

	// Listen starts listening at u.Address (u.Export is empty), applying o
	// to the listener and to every accepted conn. ctx bounds the setup
	// only: once Listen has returned, the listener lives until Close, and
	// Close must unblock a pending Accept with an error wrapping
	// net.ErrClosed. The listener should also implement
	// SetDeadline(time.Time) error so that Accept can time out (see
	// AcceptContext).
	Listen(ctx context.Context, u *URL, o Options) (net.Listener, error)
}

// An AddressParser is a Transport that checks and canonicalises the address
// part of its URLs. It is optional: without it any non-empty address is
// accepted as is, and the transport's form is shown as scheme://address/export.
type AddressParser interface {
	// ParseAddress checks addr and returns its canonical form. addr is the
	// authority of a URL written scheme://authority/export (host:port,
	// [v6]:port, name) or the path of one written
	// scheme:///path?export=name (it then starts with '/'; it is "" when
	// the URL has neither). The error's text says what is wrong; ParseURL
	// turns it into a *URLError.
	ParseAddress(addr string) (string, error)
	// Forms returns the URL forms the transport accepts, for error
	// messages and help texts, e.g. "dst+unix:///path/to.sock?export=name".
	Forms() []string
}

var (
	regMu    sync.RWMutex
	byName   = map[string]Transport{}
	byScheme = map[string]Transport{}
)

var schemeRE = regexp.MustCompile(`^[a-z][a-z0-9+.-]*$`)

// Register makes a transport available to ParseURL, Dial and Listen. It is
// meant to be called from the init function of the transport's file. It
// panics if the name is empty or taken, if the transport has no schemes, or
// if a scheme is malformed or already served by another transport.
func Register(t Transport) {
	regMu.Lock()
	defer regMu.Unlock()
	name := t.Name()
	if name == "" {
		panic("transport: Register of a transport with an empty name")
	}
	if _, dup := byName[name]; dup {
		panic(fmt.Sprintf("transport: Register called twice for transport %q", name))
	}
	schemes := t.Schemes()
	if len(schemes) == 0 {
		panic(fmt.Sprintf("transport: transport %q has no URL schemes", name))
	}
	for _, s := range schemes {
		if !schemeRE.MatchString(s) {
			panic(fmt.Sprintf("transport: transport %q: malformed scheme %q", name, s))
		}
		if other, dup := byScheme[s]; dup {
			panic(fmt.Sprintf("transport: scheme %q of transport %q is already served by %q", s, name, other.Name()))
		}
	}
	byName[name] = t
	for _, s := range schemes {
		byScheme[s] = t
	}
}

func lookupScheme(scheme string) Transport {
	regMu.RLock()
	defer regMu.RUnlock()
	return byScheme[scheme]
}

func lookupName(name string) Transport {
	regMu.RLock()
	defer regMu.RUnlock()
	return byName[name]
}

// AcceptedForms returns the URL forms of all registered transports, in a
// stable order, as listed in URL error messages.
func AcceptedForms() []string {
	regMu.RLock()
	ts := make([]Transport, 0, len(byName))
	for _, t := range byName {
		ts = append(ts, t)
	}
	regMu.RUnlock()
	slices.SortFunc(ts, func(a, b Transport) int {
		if c := compareStrings(a.Schemes()[0], b.Schemes()[0]); c != 0 {
			return c
		}
		return compareStrings(a.Name(), b.Name())
	})
	var forms []string
	for _, t := range ts {
		if ap, ok := t.(AddressParser); ok {
			forms = append(forms, ap.Forms()...)
		} else {
			forms = append(forms, t.Schemes()[0]+"://address/export")
		}
	}
	return forms
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Dial parses rawURL and connects to it; see DialURL. The parsed URL is
// returned even when the dial fails (it is nil only if parsing failed, with a
// *URLError).
func Dial(ctx context.Context, rawURL string, o Options) (net.Conn, *URL, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return nil, nil, err
	}
	c, err := DialURL(ctx, u, o)
	return c, u, err
}

// DialURL connects to u with the transport registered for u.Transport. The
// options in u's query override o. The dial stops when ctx is done or after
// o.DialTimeout. Errors read "dial URL: cause" and wrap the cause (a
// *URLError, context.Canceled or a timeout, a syscall.Errno such as
// ECONNREFUSED, ...).
func DialURL(ctx context.Context, u *URL, o Options) (net.Conn, error) {
	t := lookupName(u.Transport)
	if t == nil {
		return nil, fmt.Errorf("dial %s: unknown transport %q", u, u.Transport)
	}
	o = u.applyQuery(o)
	if o.DialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.DialTimeout)
		defer cancel()
	}
	c, err := t.Dial(ctx, u, o)
	if err != nil {
		cerr := ctx.Err()
		if _, ok := ctx.Deadline(); ok && cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// The socket's copy of the context deadline fired a moment
			// before the context's own timer.
			cerr = context.DeadlineExceeded
		}
		if cerr != nil && !errors.Is(err, cerr) {
			// Make the cause visible to errors.Is.
			return nil, fmt.Errorf("dial %s: %w (%w)", u, err, cerr)
		}
		return nil, fmt.Errorf("dial %s: %w", u, err)
	}
	return c, nil
}

// Listen parses rawURL, which must not name an export, and listens on it
// with the transport registered for its scheme. The returned URL is the one
// actually listened on: its Address is the listener's address, so a TCP
// port 0 is replaced by the port the kernel chose, and it can be given to
// DialURL. ctx bounds the setup only; close the listener to stop it.
func Listen(ctx context.Context, rawURL string, o Options) (net.Listener, *URL, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return nil, nil, err
	}
	l, err := ListenURL(ctx, u, o)
	if err != nil {
		return nil, u, err
	}
	bound := *u
	bound.Address = l.Addr().String()
	return l, &bound, nil
}

// ListenURL is Listen for a parsed URL. It does not modify u.
func ListenURL(ctx context.Context, u *URL, o Options) (net.Listener, error) {
	if u.Export != "" {
		return nil, fmt.Errorf("listen %s: %w", u, badURL(u.String(),
			fmt.Sprintf("a listen URL names no export (got export %q)", u.Export), nil))
	}
	t := lookupName(u.Transport)
	if t == nil {
		return nil, fmt.Errorf("listen %s: unknown transport %q", u, u.Transport)
	}
	o = u.applyQuery(o)
	l, err := t.Listen(ctx, u, o)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", u, err)
	}
	return l, nil
}

// AcceptContext calls l.Accept and makes it return early when ctx is done,
// by setting a past deadline on l, which must implement
// SetDeadline(time.Time) error as the listeners of this package do. It
// clears the deadline before returning, so it must not be mixed with other
// uses of SetDeadline on l. When ctx ends the Accept, the error wraps
// ctx.Err().
func AcceptContext(ctx context.Context, l net.Listener) (net.Conn, error) {
	dl, ok := l.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return nil, fmt.Errorf("accept on %s: listener %T has no SetDeadline", l.Addr(), l)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("accept on %s: %w", l.Addr(), err)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = dl.SetDeadline(time.Unix(1, 0))
	})
	c, err := l.Accept()
	if stop() {
		return c, err
	}
	// ctx ended the wait, or raced with a successful Accept: clear the
	// deadline once the AfterFunc is done setting it.
	<-fired
	_ = dl.SetDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("accept on %s: %w", l.Addr(), ctx.Err())
	}
	return c, nil
}

// setBuffers applies o's socket buffer sizes to a raw socket.
func setBuffers(rc syscall.RawConn, o Options) error {
	if o.SendBuffer <= 0 && o.RecvBuffer <= 0 {
		return nil
	}
	var serr error
	err := rc.Control(func(fd uintptr) {
		if o.SendBuffer > 0 {
			if e := syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, o.SendBuffer); e != nil {
				serr = fmt.Errorf("set SO_SNDBUF %d: %w", o.SendBuffer, e)
				return
			}
		}
		if o.RecvBuffer > 0 {
			if e := syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.RecvBuffer); e != nil {
				serr = fmt.Errorf("set SO_RCVBUF %d: %w", o.RecvBuffer, e)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// controlBuffers returns a net.Dialer/net.ListenConfig Control function
// that sets o's buffer sizes before connect or bind (so that TCP window
// scaling takes them into account), or nil when there is nothing to set.
func controlBuffers(o Options) func(network, address string, rc syscall.RawConn) error {
	if o.SendBuffer <= 0 && o.RecvBuffer <= 0 {
		return nil
	}
	return func(_, _ string, rc syscall.RawConn) error { return setBuffers(rc, o) }
}
