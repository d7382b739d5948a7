package transport_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dst-dev/dst/transport"
)

// kind is a transport setup under test.
type kind struct {
	name string
	// listenURL returns a URL to listen on, unique to the test.
	listenURL func(t testing.TB) string
}

var memSeq atomic.Int64

var kinds = []kind{
	{"tcp4", func(testing.TB) string { return "dst://127.0.0.1:0" }},
	{"tcp6", func(t testing.TB) string {
		if !haveIPv6(t) {
			t.Skip("no usable IPv6 loopback (::1) on this host")
		}
		return "dst://[::1]:0"
	}},
	{"unix", func(t testing.TB) string { return "dst+unix://" + filepath.Join(t.TempDir(), "s.sock") }},
	{"mem", func(testing.TB) string { return fmt.Sprintf("dst+mem://test-%d", memSeq.Add(1)) }},
}

var (
	ipv6Once sync.Once
	ipv6OK   bool
	ipv6Err  error
)

// haveIPv6 reports whether ::1 can be listened on and connected to.
func haveIPv6(t testing.TB) bool {
	ipv6Once.Do(func() {
		l, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			ipv6Err = err
			return
		}
		defer l.Close()
		c, err := net.DialTimeout("tcp6", l.Addr().String(), time.Second)
		if err != nil {
			ipv6Err = err
			return
		}
		c.Close()
		ipv6OK = true
	})
	if !ipv6OK {
		t.Logf("IPv6 loopback unusable: %v", ipv6Err)
	}
	return ipv6OK
}

func forKinds(t *testing.T, f func(t *testing.T, k kind)) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) { f(t, k) })
	}
}

// listen listens on rawURL and closes the listener at cleanup.
func listen(t testing.TB, rawURL string, o transport.Options) (net.Listener, *transport.URL) {
	t.Helper()
	l, u, err := transport.Listen(context.Background(), rawURL, o)
	if err != nil {
		t.Fatalf("Listen(%q): %v", rawURL, err)
	}
	t.Cleanup(func() { l.Close() })
	return l, u
}

// pair returns a connected client and server conn of kind k; both are
// closed at cleanup.
func pair(t testing.TB, k kind, o transport.Options) (client, server net.Conn) {
	t.Helper()
	l, u := listen(t, k.listenURL(t), o)
	return dialAccept(t, l, u, o)
}

func dialAccept(t testing.TB, l net.Listener, u *transport.URL, o transport.Options) (client, server net.Conn) {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := transport.DialURL(ctx, u, o)
	if err != nil {
		l.Close()
		<-ch
		t.Fatalf("DialURL(%s): %v", u, err)
	}
	r := <-ch
	if r.err != nil {
		client.Close()
		t.Fatalf("Accept: %v", r.err)
	}
	t.Cleanup(func() {
		client.Close()
		r.c.Close()
	})
	return client, r.c
}

// group runs goroutines and waits for them; the test owns every goroutine
// it starts through it.
type group struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, err)
			g.mu.Unlock()
		}
	}()
}

func (g *group) Wait(t testing.TB) {
	t.Helper()
	g.wg.Wait()
	for _, err := range g.errs {
		t.Error(err)
	}
}
