package transport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/internal/leakcheck"
)

func getsockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, gerr)
	}
	return v
}

// TestTCPSocketOptions reads back with getsockopt what Options asked for,
// on both the dialled and the accepted conn.
func TestTCPSocketOptions(t *testing.T) {
	leakcheck.Check(t)
	type want struct {
		nodelay, keepalive, idle, intvl, cnt int
		sndbuf, rcvbuf                       int // 0: not checked
	}
	const buf = 64 << 10
	for _, tc := range []struct {
		name string
		url  string
		o    transport.Options
		want want
	}{
		{"defaults", "dst://127.0.0.1:0", transport.Options{}, want{1, 1, 15, 15, transport.KeepAliveProbes, 0, 0}},
		{"tuned", "dst://127.0.0.1:0", transport.Options{DisableNoDelay: true, KeepAlive: 7 * time.Second, SendBuffer: buf, RecvBuffer: buf},
			// Linux doubles the requested buffer size for its bookkeeping.
			want{0, 1, 7, 7, transport.KeepAliveProbes, 2 * buf, 2 * buf}},
		{"keepalive off", "dst://127.0.0.1:0", transport.Options{KeepAlive: -1}, want{1, 0, -1, -1, -1, 0, 0}},
		{"url query", "dst://127.0.0.1:0?nodelay=false&keepalive=9s&sndbuf=65536", transport.Options{},
			want{0, 1, 9, 9, transport.KeepAliveProbes, 2 * buf, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, u, err := transport.Listen(context.Background(), tc.url, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			tl := l.(interface{ TCPListener() *net.TCPListener }).TCPListener()
			if got := getsockopt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEADDR); got != 1 {
				t.Errorf("listener SO_REUSEADDR = %d, want 1", got)
			}
			client, server := dialAccept(t, l, u, tc.o)
			for side, c := range map[string]net.Conn{"dialled": client, "accepted": server} {
				if _, ok := c.(*net.TCPConn); !ok {
					t.Fatalf("%s conn is a %T, want *net.TCPConn (for writev)", side, c)
				}
				check := func(name string, level, opt, want int) {
					if want < 0 {
						return
					}
					if got := getsockopt(t, c.(syscall.Conn), level, opt); got != want {
						t.Errorf("%s conn: %s = %d, want %d", side, name, got, want)
					}
				}
				check("TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, tc.want.nodelay)
				check("SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, tc.want.keepalive)
				check("TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, tc.want.idle)
				check("TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, tc.want.intvl)
				check("TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, tc.want.cnt)
				if tc.want.sndbuf > 0 {
					check("SO_SNDBUF", unix.SOL_SOCKET, unix.SO_SNDBUF, tc.want.sndbuf)
				}
				if tc.want.rcvbuf > 0 {
					check("SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, tc.want.rcvbuf)
				}
			}
		})
	}
}

func TestPeerIP(t *testing.T) {
	leakcheck.Check(t)
	check := func(t *testing.T, c net.Conn, want string) {
		t.Helper()
		ip, ok := transport.PeerIP(c)
		if !ok || ip != netip.MustParseAddr(want) {
			t.Errorf("PeerIP = %v, %v; want %s, true", ip, ok, want)
		}
	}
	t.Run("tcp4", func(t *testing.T) {
		c, s := pair(t, kinds[0], transport.Options{})
		check(t, c, "127.0.0.1")
		check(t, s, "127.0.0.1")
		ip, _ := transport.PeerIP(s)
		if !netip.MustParsePrefix("127.0.0.0/8").Contains(ip) {
			t.Errorf("127.0.0.0/8 does not contain PeerIP %v", ip)
		}
	})
	t.Run("tcp6", func(t *testing.T) {
		c, s := pair(t, kinds[1], transport.Options{})
		check(t, c, "::1")
		check(t, s, "::1")
	})
	t.Run("v4 on dual-stack listener", func(t *testing.T) {
		if !haveIPv6(t) {
			t.Skip("no IPv6")
		}
		l, u := listen(t, "dst://[::]:0", transport.Options{})
		_, port, _ := net.SplitHostPort(u.Address)
		u4, err := transport.ParseURL("dst://127.0.0.1:" + port)
		if err != nil {
			t.Fatal(err)
		}
		_, s := dialAccept(t, l, u4, transport.Options{})
		raw := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		t.Logf("raw remote address %v", raw)
		check(t, s, "127.0.0.1")
		if ip, _ := transport.PeerIP(s); !ip.Is4() {
			t.Errorf("PeerIP %v is not IPv4 (from %v)", ip, raw)
		}
	})
	t.Run("zone dropped", func(t *testing.T) {
		c := addrConn{remote: &net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0", Port: 1}}
		check(t, c, "fe80::1")
	})
	t.Run("unix and mem", func(t *testing.T) {
		for _, k := range kinds[2:] {
			c, s := pair(t, k, transport.Options{})
			for _, conn := range []net.Conn{c, s} {
				if ip, ok := transport.PeerIP(conn); ok {
					t.Errorf("%s: PeerIP = %v, true; want false", k.name, ip)
				}
			}
		}
		if _, ok := transport.PeerIP(nil); ok {
			t.Error("PeerIP(nil) reported an address")
		}
	})
}

// addrConn is a net.Conn stub with a given remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// TestTCPDialTimeout dials a listener whose accept queue is full, so that
// the kernel drops the SYNs and connect hangs: the context, or
// Options.DialTimeout, must end the dial.
func TestTCPDialTimeout(t *testing.T) {
	leakcheck.Check(t)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	rawURL := fmt.Sprintf("dst://127.0.0.1:%d/e", sa.(*unix.SockaddrInet4).Port)

	// Fill the queue: each dial succeeds until one hangs.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; ; i++ {
		if i == 16 {
			t.Fatal("16 dials to a listener with backlog 0 all succeeded; cannot test a hanging dial")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		c, _, err := transport.Dial(ctx, rawURL, transport.Options{})
		cancel()
		if err == nil {
			conns = append(conns, c)
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("hanging dial: %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
			t.Errorf("dial ended after %v, want about 200ms", d)
		}
		break
	}
	// DialTimeout works without a context deadline.
	start := time.Now()
	c, _, err := transport.Dial(context.Background(), rawURL, transport.Options{DialTimeout: 100 * time.Millisecond})
	if err == nil {
		c.Close()
		t.Fatal("dial with a full accept queue succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("dial with DialTimeout: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 80*time.Millisecond || d > 5*time.Second {
		t.Errorf("dial ended after %v, want about 100ms", d)
	}
	// And so does ?timeout= in the URL.
	start = time.Now()
	c, _, err = transport.Dial(context.Background(), rawURL+"?timeout=100ms", transport.Options{})
	if err == nil {
		c.Close()
		t.Fatal("dial with a full accept queue succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("dial with ?timeout=100ms ended after %v", d)
	}
}

// TestWritevSingleSyscall checks under strace that net.Buffers.WriteTo on a
// conn from this package issues one writev for a header and a payload. It
// re-runs this test binary under strace in helper mode.
func TestWritevSingleSyscall(t *testing.T) {
	if k := os.Getenv("DST_WRITEV_HELPER"); k != "" {
		writevHelper(t, k)
		return
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed; TestTCPSocketOptions still checks that conns are *net.TCPConn")
	}
	for _, k := range []string{"tcp", "unix"} {
		t.Run(k, func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "trace")
			cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=write,writev,sendto,sendmsg", "-o", trace,
				os.Args[0], "-test.run=^TestWritevSingleSyscall$", "-test.count=1")
			cmd.Env = append(os.Environ(), "DST_WRITEV_HELPER="+k)
			out, err := cmd.CombinedOutput()
			if err != nil {
				if strings.Contains(string(out), "ptrace") || strings.Contains(string(out), "Operation not permitted") {
					t.Skipf("strace cannot trace here: %s", out)
				}
				t.Fatalf("strace: %v\n%s", err, out)
			}
			data, err := os.ReadFile(trace)
			if err != nil {
				t.Fatal(err)
			}
			// The helper writes a 40-byte header and a 4000-byte payload.
			writev := regexp.MustCompile(`writev\(\d+, \[\{iov_base=.*iov_len=40\}, \{iov_base=.*iov_len=4000\}\], 2\) = 4040`)
			split := regexp.MustCompile(`(write|sendto|sendmsg)\(\d+, .*, (40|4000)(, .*)?\) = (40|4000)`)
			var nv int
			for _, line := range strings.Split(string(data), "\n") {
				if writev.MatchString(line) {
					nv++
				}
				if split.MatchString(line) {
					t.Errorf("header or payload sent on its own: %s", line)
				}
			}
			if nv != 1 {
				t.Errorf("found %d writev calls of header+payload, want 1; trace:\n%s", nv, grepLines(string(data), "writev"))
			}
		})
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func writevHelper(t *testing.T, k string) {
	url := "dst://127.0.0.1:0"
	if k == "unix" {
		url = "dst+unix://" + filepath.Join(t.TempDir(), "w.sock")
	}
	l, u := listen(t, url, transport.Options{})
	client, server := dialAccept(t, l, u, transport.Options{})
	bufs := net.Buffers{make([]byte, 40), make([]byte, 4000)}
	if n, err := bufs.WriteTo(client); n != 4040 || err != nil {
		t.Fatalf("WriteTo = %d, %v", n, err)
	}
	if _, err := io.ReadFull(server, make([]byte, 4040)); err != nil {
		t.Fatal(err)
	}
}
