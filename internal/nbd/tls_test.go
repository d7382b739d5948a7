package nbd

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/dst-dev/dst/internal/testpki"
)

// testTLS returns a server config with a fresh certificate for
// "nbd.test" and a client config that trusts its CA.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca := testpki.New(t, "nbd test CA")
	cert, _, _ := ca.Issue(true, "nbd.test", "nbd.test")
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: ca.Pool, ServerName: "nbd.test", MinVersion: tls.VersionTLS12}
}

// negotiateTLS runs NegotiateServer on one end of a TCP pair and client
// on the other; it returns the server's results once the client is done.
func negotiateTLS(t *testing.T, o ServerOptions, client func(c net.Conn)) (*Negotiated, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		n   *Negotiated
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := l.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		sc, n, err := NegotiateServer(s, h2{}, o)
		if err == nil && n.Export.Name == "disk" {
			// The transmission phase runs on the returned conn: echo a byte.
			var b [1]byte
			if _, err = sc.Read(b[:]); err == nil {
				_, err = sc.Write(b[:])
			}
		}
		ch <- res{n, err}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	client(c)
	c.Close()
	r := <-ch
	return r.n, r.err
}

type h2 struct{ testHandler }

func TestNegotiateTLS(t *testing.T) {
	srv, cli := testTLS(t)
	for _, require := range []bool{false, true} {
		var conn net.Conn
		var info ExportInfo
		var cerr error
		n, err := negotiateTLS(t, ServerOptions{TLS: srv, RequireTLS: require}, func(c net.Conn) {
			conn, info, _, cerr = ClientConnect(c, ClientOptions{Export: "disk", Structured: true, TLS: cli})
			if cerr == nil {
				var b [1]byte
				if _, err := conn.Write([]byte{42}); err != nil {
					cerr = err
				} else if _, err := conn.Read(b[:]); err != nil || b[0] != 42 {
					cerr = errors.New("no echo over TLS")
				}
			}
		})
		if cerr != nil || err != nil || info.Size != 1<<20 || !n.Structured {
			t.Fatalf("require=%v: client %v, server %v, info %+v", require, cerr, err, info)
		}
		if _, ok := conn.(*tls.Conn); !ok {
			t.Fatalf("transmission conn is %T, want *tls.Conn", conn)
		}
	}
}

func TestNegotiateTLSRequired(t *testing.T) {
	srv, _ := testTLS(t)
	// GO before STARTTLS: refused with TLS_REQD; then ABORT.
	var got ReplyType
	_, err := negotiateTLS(t, ServerOptions{TLS: srv, RequireTLS: true}, func(c net.Conn) {
		_, _, cerr := ClientGo(c, ClientOptions{Export: "disk"})
		var oe *OptionError
		if errors.As(cerr, &oe) {
			got = oe.Type
		}
	})
	if got != RepErrTLSReqd || !errors.Is(err, ErrAborted) {
		t.Fatalf("GO before STARTTLS: reply %#x, server %v", uint32(got), err)
	}
	// Without a TLS config STARTTLS is unsupported, and NegotiateServer
	// refuses RequireTLS without one.
	_, _, cerr := func() (net.Conn, ExportInfo, error) {
		var c2 net.Conn
		var e error
		negotiateTLS(t, ServerOptions{}, func(c net.Conn) {
			_, _, _, e = ClientConnect(c, ClientOptions{Export: "disk", TLS: &tls.Config{}})
		})
		return c2, ExportInfo{}, e
	}()
	var oe *OptionError
	if !errors.As(cerr, &oe) || oe.Type != RepErrUnsup {
		t.Fatalf("STARTTLS without TLS: %v", cerr)
	}
	if _, _, err := NegotiateServer(nil, h2{}, ServerOptions{RequireTLS: true}); err == nil {
		t.Fatal("RequireTLS without TLS accepted")
	}
	// A failed TLS handshake (the client does not trust the certificate)
	// ends the negotiation with an error on both sides.
	_, err = negotiateTLS(t, ServerOptions{TLS: srv}, func(c net.Conn) {
		_, _, _, cerr = ClientConnect(c, ClientOptions{Export: "disk", TLS: &tls.Config{ServerName: "nbd.test"}})
	})
	if cerr == nil || err == nil {
		t.Fatalf("untrusted certificate: client %v, server %v", cerr, err)
	}
}
