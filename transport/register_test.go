package transport_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/internal/leakcheck"
)

// loopTransport is a transport added the way doc.go says: one file, one
// init. It has no AddressParser, so it gets the default URL syntax. It
// relays to the mem transport.
type loopTransport struct{ name string }

func init() { transport.Register(loopTransport{"loop"}) }

func (t loopTransport) Name() string      { return t.name }
func (t loopTransport) Schemes() []string { return []string{"dst+" + t.name} }

func (loopTransport) memURL(u *transport.URL) *transport.URL {
	return &transport.URL{Scheme: "dst+mem", Transport: "mem", Address: "loop-" + u.Address}
}

func (t loopTransport) Dial(ctx context.Context, u *transport.URL, o transport.Options) (net.Conn, error) {
	return transport.DialURL(ctx, t.memURL(u), o)
}

func (t loopTransport) Listen(ctx context.Context, u *transport.URL, o transport.Options) (net.Listener, error) {
	return transport.ListenURL(ctx, t.memURL(u), o)
}

func TestAddedTransport(t *testing.T) {
	leakcheck.Check(t)
	if forms := transport.AcceptedForms(); !slices.Contains(forms, "dst+loop://address/export") {
		t.Errorf("AcceptedForms() = %q lacks the loop transport", forms)
	}
	u, err := transport.ParseURL("dst+loop://x1/e")
	if err != nil || u.Transport != "loop" || u.Address != "x1" || u.Export != "e" {
		t.Fatalf("ParseURL = %#v, %v", u, err)
	}
	if _, err := transport.ParseURL("dst+loop://"); err == nil || !strings.Contains(err.Error(), "empty address") {
		t.Errorf("ParseURL of an empty address: %v", err)
	}
	// Without an authority the address is the path, and String keeps that form.
	u, err = transport.ParseURL("dst+loop:///p?export=e")
	if err != nil || u.Address != "/p" || u.Export != "e" || u.String() != "dst+loop:///p?export=e" {
		t.Errorf("ParseURL(path form) = %#v (%s), %v", u, u, err)
	}
	l, _ := listen(t, "dst+loop://x1", transport.Options{})
	var g group
	g.Go(func() error {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.Copy(c, c)
		return err
	})
	c, _, err := transport.Dial(context.Background(), "dst+loop://x1/e", transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("echo = %q, %v", buf, err)
	}
	c.Close()
	g.Wait(t)
}

type stubTransport struct {
	name    string
	schemes []string
}

func (s stubTransport) Name() string      { return s.name }
func (s stubTransport) Schemes() []string { return s.schemes }
func (stubTransport) Dial(context.Context, *transport.URL, transport.Options) (net.Conn, error) {
	return nil, fmt.Errorf("stub")
}
func (stubTransport) Listen(context.Context, *transport.URL, transport.Options) (net.Listener, error) {
	return nil, fmt.Errorf("stub")
}

func TestRegisterPanics(t *testing.T) {
	for _, tc := range []struct {
		t    transport.Transport
		want string
	}{
		{stubTransport{"", []string{"dst+x"}}, "empty name"},
		{stubTransport{"tcp", []string{"dst+x"}}, `twice for transport "tcp"`},
		{stubTransport{"x", nil}, "no URL schemes"},
		{stubTransport{"x", []string{"Dst+X"}}, "malformed scheme"},
		{stubTransport{"x", []string{"dst+x", "dst"}}, `scheme "dst" of transport "x" is already served by "tcp"`},
	} {
		func() {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), tc.want) {
					t.Errorf("Register(%+v): panic %v, want one mentioning %q", tc.t, r, tc.want)
				}
			}()
			transport.Register(tc.t)
		}()
	}
	// The failed registrations left nothing behind.
	if _, err := transport.ParseURL("dst+x://h/e"); err == nil {
		t.Error("a transport whose Register panicked serves URLs")
	}
}
