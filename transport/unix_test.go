package transport_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/internal/leakcheck"
)

func TestUnixSocketFile(t *testing.T) {
	leakcheck.Check(t)
	path := filepath.Join(t.TempDir(), "dst.sock")
	l, u := listen(t, "dst+unix://"+path, transport.Options{})
	if u.Address != path {
		t.Errorf("bound address %q, want %q", u.Address, path)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != transport.SocketMode {
		t.Errorf("socket file mode %v, want socket with %v", fi.Mode(), transport.SocketMode)
	}
	if transport.SocketMode != 0o660 {
		t.Errorf("SocketMode = %v, want 0660", transport.SocketMode)
	}
	// A second listener on a live socket is refused, and leaves it alone.
	l2, _, err := transport.Listen(context.Background(), "dst+unix://"+path, transport.Options{})
	if err == nil {
		l2.Close()
		t.Fatal("Listen on a live socket succeeded")
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "another process is listening") {
		t.Errorf("Listen on a live socket: %v, want EADDRINUSE", err)
	}
	c, s := dialAccept(t, l, u, transport.Options{})
	c.Close()
	s.Close()
	// Close removes the file.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file still there after Close: %v", err)
	}
}

func TestUnixStaleSocket(t *testing.T) {
	leakcheck.Check(t)
	path := filepath.Join(t.TempDir(), "stale.sock")
	// Leave a socket file behind, as a crashed exporter would.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l, u := listen(t, "dst+unix://"+path, transport.Options{})
	c, s := dialAccept(t, l, u, transport.Options{})
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
}

func TestUnixNotASocket(t *testing.T) {
	leakcheck.Check(t)
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, _, err := transport.Listen(context.Background(), "dst+unix://"+path, transport.Options{})
	if err == nil {
		l.Close()
		t.Fatal("Listen over a regular file succeeded")
	}
	if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("error %v does not say the file is not a socket", err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "precious" {
		t.Errorf("the file was touched: %q, %v", data, err)
	}
}

func TestPeerCred(t *testing.T) {
	leakcheck.Check(t)
	c, s := pair(t, kinds[2], transport.Options{})
	for side, conn := range map[string]net.Conn{"client": c, "server": s} {
		uid, gid, pid, ok := transport.PeerCred(conn)
		if !ok || uid != os.Getuid() || gid != os.Getgid() || pid != os.Getpid() {
			t.Errorf("%s: PeerCred = %d, %d, %d, %v; want %d, %d, %d, true",
				side, uid, gid, pid, ok, os.Getuid(), os.Getgid(), os.Getpid())
		}
	}
	// Through a wrapper exposing NetConn.
	if _, _, pid, ok := transport.PeerCred(wrapped{s}); !ok || pid != os.Getpid() {
		t.Errorf("PeerCred through NetConn: pid %d, %v", pid, ok)
	}
	for _, k := range []kind{kinds[0], kinds[3]} {
		c, _ := pair(t, k, transport.Options{})
		if _, _, _, ok := transport.PeerCred(c); ok {
			t.Errorf("%s: PeerCred reported credentials", k.name)
		}
	}
}

type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }
