package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The unix transport: dst+unix:///path/to.sock?export=name, a stream
// (SOCK_STREAM) Unix domain socket.
//
// Access control is by file permissions: Listen creates the socket with mode
// 0660, so only the owner and group of the socket file (and root) can
// connect; put it in a directory that restricts access further if needed
// (the mode is set right after bind, so for an instant the socket has the
// umask's mode). PeerIP reports false for these conns; PeerCred gives the
// peer's uid, gid and pid.
//
// Listen replaces a stale socket file (left by a process that died) but
// refuses to touch a socket something is still listening on, or a file that
// is not a socket. Closing the listener removes the socket file.

func init() { Register(unixTransport{}) }

// SocketMode is the permission mode of the socket files unix listeners create.
const SocketMode os.FileMode = 0o660

// maxUnixPath is the longest socket path (sun_path holds 108 bytes with the
// terminating NUL).
const maxUnixPath = 107

type unixTransport struct{}

func (unixTransport) Name() string      { return "unix" }
func (unixTransport) Schemes() []string { return []string{"dst+unix"} }
func (unixTransport) Forms() []string {
	return []string{"dst+unix:///path/to.sock?export=name"}
}

// ParseAddress accepts an absolute path and returns it cleaned.
func (unixTransport) ParseAddress(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("empty unix socket path")
	}
	if !strings.HasPrefix(addr, "/") {
		return "", fmt.Errorf("unix socket path %q is not absolute (write dst+unix:///abs/path.sock)", addr)
	}
	if strings.IndexByte(addr, 0) >= 0 {
		return "", errors.New("unix socket path contains a NUL byte")
	}
	p := filepath.Clean(addr)
	if len(p) > maxUnixPath {
		return "", fmt.Errorf("unix socket path is %d bytes long (at most %d)", len(p), maxUnixPath)
	}
	return p, nil
}

func (unixTransport) Dial(ctx context.Context, u *URL, o Options) (net.Conn, error) {
	d := net.Dialer{Control: controlBuffers(o)}
	c, err := d.DialContext(ctx, "unix", u.Address)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

func (unixTransport) Listen(ctx context.Context, u *URL, o Options) (net.Listener, error) {
	path := u.Address
	if err := removeStaleSocket(ctx, path); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: controlBuffers(o)}
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	if err := os.Chmod(path, SocketMode); err != nil {
		ul.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return &unixListener{l: ul, o: o}, nil
}

// removeStaleSocket removes path if it is a socket nobody listens on. It
// fails if path is something else, or a live socket.
func removeStaleSocket(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (mode %v): %w", path, fi.Mode(), syscall.EADDRINUSE)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("%s: another process is listening on it: %w", path, syscall.EADDRINUSE)
	case errors.Is(err, syscall.ECONNREFUSED):
		// Stale: nothing listens. Remove it, tolerating a concurrent removal.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
		return nil
	case errors.Is(err, syscall.EAGAIN):
		// A live listener whose backlog is full.
		return fmt.Errorf("%s: another process is listening on it: %w", path, syscall.EADDRINUSE)
	case errors.Is(err, os.ErrNotExist):
		return nil
	default:
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
}

type unixListener struct {
	l *net.UnixListener
	o Options
}

func (l *unixListener) Accept() (net.Conn, error) {
	c, err := l.l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	if rc, err := c.SyscallConn(); err == nil {
		if err := setBuffers(rc, l.o); err != nil {
			c.Close()
			return nil, fmt.Errorf("accept: %w", err)
		}
	}
	return c, nil
}

// Close stops the listener and removes its socket file.
func (l *unixListener) Close() error                  { return l.l.Close() }
func (l *unixListener) Addr() net.Addr                { return l.l.Addr() }
func (l *unixListener) SetDeadline(t time.Time) error { return l.l.SetDeadline(t) }

// UnixListener returns the underlying *net.UnixListener.
func (l *unixListener) UnixListener() *net.UnixListener { return l.l }

// PeerCred returns the credentials of the process at the other end of a unix
// conn (SO_PEERCRED: as they were when it connected). c may be a wrapper
// that exposes the conn through a NetConn() net.Conn method, as fault.Conn
// does. ok is false for other conns, and on systems without SO_PEERCRED.
func PeerCred(c net.Conn) (uid, gid, pid int, ok bool) {
	for c != nil {
		if uc, isUnix := c.(*net.UnixConn); isUnix {
			return peerCred(uc)
		}
		w, isWrapper := c.(interface{ NetConn() net.Conn })
		if !isWrapper {
			break
		}
		c = w.NetConn()
	}
	return 0, 0, 0, false
}
