package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// The tcp transport: dst://host:port/export over IPv4 or IPv6.
//
// Conns are *net.TCPConn with TCP_NODELAY set (unless
// Options.DisableNoDelay), keep-alive probes every Options.KeepAlive
// (KeepAliveProbes of them before the conn is declared dead) and the
// requested socket buffers. Because they are not wrapped,
// net.Buffers.WriteTo sends a header and its payload with one writev.
// Listeners use SO_REUSEADDR (Go's default), so an exporter can restart at
// once while old conns are in TIME_WAIT.

func init() { Register(tcpTransport{}) }

type tcpTransport struct{}

func (tcpTransport) Name() string      { return "tcp" }
func (tcpTransport) Schemes() []string { return []string{"dst", "dst+tcp"} }

func (tcpTransport) Forms() []string {
	return []string{
		"dst://host:port/export",
		"dst://[v6addr]:port/export",
		"dst://host/export (port " + strconv.Itoa(DefaultPort) + ")",
	}
}

// ParseAddress accepts host, host:port, [v6], [v6]:port, where host is an
// IPv4 address or a DNS name, and returns host:port with the port filled in
// and IP addresses in canonical form.
func (tcpTransport) ParseAddress(addr string) (string, error) {
	if addr == "" || strings.HasPrefix(addr, "/") {
		return "", errors.New("empty host")
	}
	var host, port string
	hasPort := false
	if strings.HasPrefix(addr, "[") {
		end := strings.IndexByte(addr, ']')
		if end < 0 {
			return "", fmt.Errorf("missing ']' in host %q", addr)
		}
		host = addr[1:end]
		rest := addr[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return "", fmt.Errorf("unexpected %q after IPv6 address", rest)
			}
			port, hasPort = rest[1:], true
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() {
			return "", fmt.Errorf("bad IPv6 address %q", host)
		}
		if err := checkZone(ip.Zone()); err != nil {
			return "", err
		}
		host = ip.String()
	} else {
		host = addr
		if i := strings.LastIndexByte(addr, ':'); i >= 0 {
			host, port, hasPort = addr[:i], addr[i+1:], true
		}
		if host == "" {
			return "", errors.New("empty host")
		}
		if strings.Contains(host, ":") {
			return "", fmt.Errorf("IPv6 address %q must be in brackets: dst://[v6addr]:port/export", host)
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			host = ip.String()
		} else if err := checkHostname(host); err != nil {
			return "", err
		}
	}
	p := DefaultPort
	if hasPort {
		if port == "" {
			return "", errors.New("empty port")
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return "", fmt.Errorf("non-numeric port %q", port)
			}
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return "", fmt.Errorf("port %s out of range (1-65535)", port)
		}
		p = int(n)
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

func checkHostname(h string) error {
	if len(h) > 253 {
		return fmt.Errorf("host name is %d bytes long (at most 253)", len(h))
	}
	digitsAndDots := true
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("bad host name %q", h)
		}
		for _, c := range label {
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
				digitsAndDots = false
			default:
				return fmt.Errorf("bad character %q in host name %q", c, h)
			}
		}
	}
	if digitsAndDots {
		return fmt.Errorf("bad IPv4 address %q", h)
	}
	return nil
}

func checkZone(z string) error {
	for _, c := range z {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("bad IPv6 zone %q", z)
		}
	}
	return nil
}

// Dial connects with net.Dialer, honouring ctx. Port 0 is refused with a
// *URLError.
func (tcpTransport) Dial(ctx context.Context, u *URL, o Options) (net.Conn, error) {
	if strings.HasSuffix(u.Address, ":0") {
		return nil, badURL(u.String(), "port 0 is only valid for listening", nil)
	}
	kac, ka := o.keepAliveConfig()
	d := net.Dialer{
		KeepAlive:       ka,
		KeepAliveConfig: kac,
		Control:         controlBuffers(o),
	}
	c, err := d.DialContext(ctx, "tcp", u.Address)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if err := tc.SetNoDelay(!o.DisableNoDelay); err != nil {
		tc.Close()
		return nil, fmt.Errorf("set TCP_NODELAY: %w", err)
	}
	return tc, nil
}

// Listen binds u.Address (port 0 picks a free port). Accepted conns get the
// same options as dialled ones.
func (tcpTransport) Listen(ctx context.Context, u *URL, o Options) (net.Listener, error) {
	kac, ka := o.keepAliveConfig()
	lc := net.ListenConfig{
		KeepAlive:       ka,
		KeepAliveConfig: kac,
		Control:         controlBuffers(o),
	}
	l, err := lc.Listen(ctx, "tcp", u.Address)
	if err != nil {
		return nil, err
	}
	return &tcpListener{l: l.(*net.TCPListener), o: o}, nil
}

// tcpListener applies Options to accepted conns. Go already sets keep-alive
// (from the ListenConfig) and TCP_NODELAY on them; the socket buffers are
// inherited from the listening socket but are set again to be sure.
type tcpListener struct {
	l *net.TCPListener
	o Options
}

func (l *tcpListener) Accept() (net.Conn, error) {
	c, err := l.l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	if l.o.DisableNoDelay {
		if err := c.SetNoDelay(false); err != nil {
			c.Close()
			return nil, fmt.Errorf("accept: set TCP_NODELAY: %w", err)
		}
	}
	if rc, err := c.SyscallConn(); err == nil {
		if err := setBuffers(rc, l.o); err != nil {
			c.Close()
			return nil, fmt.Errorf("accept: %w", err)
		}
	}
	return c, nil
}

func (l *tcpListener) Close() error                  { return l.l.Close() }
func (l *tcpListener) Addr() net.Addr                { return l.l.Addr() }
func (l *tcpListener) SetDeadline(t time.Time) error { return l.l.SetDeadline(t) }

// TCPListener returns the underlying *net.TCPListener.
func (l *tcpListener) TCPListener() *net.TCPListener { return l.l }

// PeerIP returns the IP address of the remote end of a TCP conn (or of a
// wrapper whose RemoteAddr is a *net.TCPAddr), as the exporter's access list
// needs it: an IPv4 peer reaching a dual-stack listener is returned as IPv4
// (::ffff:a.b.c.d is unmapped), and the IPv6 zone is dropped so that
// netip.Prefix.Contains works. For unix and mem conns it returns false:
// their access control is by socket file permissions (see PeerCred) or by
// being in the same process.
func PeerIP(c net.Conn) (netip.Addr, bool) {
	if c == nil {
		return netip.Addr{}, false
	}
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || a == nil {
		return netip.Addr{}, false
	}
	ip := a.AddrPort().Addr().Unmap().WithZone("")
	return ip, ip.IsValid()
}
