package transport_test

import (
	"context"
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/dst-dev/dst/transport"
)

var goodURLs = []struct {
	in        string
	scheme    string
	transport string
	address   string
	export    string
	query     url.Values
	canonical string
}{
	{"dst://host:1234/exp", "dst", "tcp", "host:1234", "exp", nil, "dst://host:1234/exp"},
	{"dst://host/exp", "dst", "tcp", "host:10811", "exp", nil, "dst://host:10811/exp"},
	{"dst://Storage-1.example.com./d", "dst", "tcp", "Storage-1.example.com.:10811", "d", nil, "dst://Storage-1.example.com.:10811/d"},
	{"dst://127.0.0.1:10811/disk0", "dst", "tcp", "127.0.0.1:10811", "disk0", nil, "dst://127.0.0.1:10811/disk0"},
	{"dst://[::1]:10811/disk0", "dst", "tcp", "[::1]:10811", "disk0", nil, "dst://[::1]:10811/disk0"},
	{"dst://[::1]/d", "dst", "tcp", "[::1]:10811", "d", nil, "dst://[::1]:10811/d"},
	{"dst://[2001:DB8:0::1]:99/d", "dst", "tcp", "[2001:db8::1]:99", "d", nil, "dst://[2001:db8::1]:99/d"},
	{"dst://[fe80::1%25eth0]:1/d", "dst", "tcp", "[fe80::1%eth0]:1", "d", nil, "dst://[fe80::1%25eth0]:1/d"},
	{"dst://0.0.0.0:10811", "dst", "tcp", "0.0.0.0:10811", "", nil, "dst://0.0.0.0:10811"},
	{"dst://[::]:10811", "dst", "tcp", "[::]:10811", "", nil, "dst://[::]:10811"},
	{"dst://h:0", "dst", "tcp", "h:0", "", nil, "dst://h:0"},
	{"dst://h:010/", "dst", "tcp", "h:10", "", nil, "dst://h:10"},
	{"dst://h/my%20disk", "dst", "tcp", "h:10811", "my disk", nil, "dst://h:10811/my%20disk"},
	{"dst://h/caf%C3%A9?", "dst", "tcp", "h:10811", "café", nil, "dst://h:10811/caf%C3%A9"},
	{"dst://h:1?export=e", "dst", "tcp", "h:1", "e", nil, "dst://h:1/e"},
	{"dst+tcp://h:1/e", "dst+tcp", "tcp", "h:1", "e", nil, "dst+tcp://h:1/e"},
	{"DST://h:1/e", "dst", "tcp", "h:1", "e", nil, "dst://h:1/e"},
	{"dst://h:1/e?nodelay=false&keepalive=5s", "dst", "tcp", "h:1", "e",
		url.Values{"nodelay": {"false"}, "keepalive": {"5s"}}, "dst://h:1/e?keepalive=5s&nodelay=false"},
	{"dst://h:1/e?keepalive=off&sndbuf=65536&rcvbuf=0&timeout=2s", "dst", "tcp", "h:1", "e",
		url.Values{"keepalive": {"off"}, "sndbuf": {"65536"}, "rcvbuf": {"0"}, "timeout": {"2s"}},
		"dst://h:1/e?keepalive=off&rcvbuf=0&sndbuf=65536&timeout=2s"},
	{"dst+unix:///run/dst.sock?export=disk0", "dst+unix", "unix", "/run/dst.sock", "disk0", nil, "dst+unix:///run/dst.sock?export=disk0"},
	{"dst+unix:///run/dst.sock", "dst+unix", "unix", "/run/dst.sock", "", nil, "dst+unix:///run/dst.sock"},
	{"dst+unix:///run//x/../dst.sock?export=a+b", "dst+unix", "unix", "/run/dst.sock", "a b", nil, "dst+unix:///run/dst.sock?export=a+b"},
	{"dst+unix:///tmp/a%20b.sock?export=e&nodelay=true", "dst+unix", "unix", "/tmp/a b.sock", "e",
		url.Values{"nodelay": {"true"}}, "dst+unix:///tmp/a%20b.sock?export=e&nodelay=true"},
	{"dst+mem://bus?export=d", "dst+mem", "mem", "bus", "d", nil, "dst+mem://bus/d"},
	{"dst+mem://bus/d", "dst+mem", "mem", "bus", "d", nil, "dst+mem://bus/d"},
	{"dst+mem://test.bus-1_x", "dst+mem", "mem", "test.bus-1_x", "", nil, "dst+mem://test.bus-1_x"},
}

func TestParseURLGood(t *testing.T) {
	for _, tc := range goodURLs {
		t.Run(tc.in, func(t *testing.T) {
			u, err := transport.ParseURL(tc.in)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			want := &transport.URL{Scheme: tc.scheme, Transport: tc.transport, Address: tc.address, Export: tc.export, Query: tc.query}
			if !reflect.DeepEqual(u, want) {
				t.Fatalf("ParseURL = %#v, want %#v", u, want)
			}
			if s := u.String(); s != tc.canonical {
				t.Errorf("String() = %q, want %q", s, tc.canonical)
			}
			u2, err := transport.ParseURL(u.String())
			if err != nil {
				t.Fatalf("ParseURL(String()): %v", err)
			}
			if !reflect.DeepEqual(u2, u) {
				t.Errorf("round trip: %#v, want %#v", u2, u)
			}
		})
	}
}

var badURLs = []struct {
	in, want string // want: a substring of the error
}{
	{"", "empty URL"},
	{"foo://x", `unknown scheme "foo"`},
	{"http://h/e", `unknown scheme "http"`},
	{"//h:1/e", "missing scheme"},
	{"dst:h/e", `missing // after "dst:"`},
	{"dst://", "empty host"},
	{"dst:///e", "empty host"},
	{"dst://:10811/e", "empty host"},
	{"dst://h:/e", "empty port"},
	{"dst://h:abc/e", `non-numeric port "abc"`},
	{"dst://[::1]:x/e", `non-numeric port "x"`},
	{"dst://h:99999/e", "port 99999 out of range"},
	{"dst://h:1/a/b", "more than one segment"},
	{"dst://h:1//", "more than one segment"},
	{"dst://h:1/a%2Fb", "contains '/'"},
	{"dst://user@h/e", "user info"},
	{"dst://h/e#frag", "fragment"},
	{"dst://h/e?foo=1", `unknown query key "foo"`},
	{"dst://h/e?export=x", "both in the path and in the query"},
	{"dst://h?export=", "empty export name"},
	{"dst://h/e?nodelay=maybe", "nodelay"},
	{"dst://h/e?timeout=0s", "timeout"},
	{"dst://h/e?keepalive=-1s", "keepalive"},
	{"dst://h/e?sndbuf=x", "sndbuf"},
	{"dst://h/e?nodelay=1&nodelay=0", `query key "nodelay" given 2 times`},
	{"dst://h/e?%zz", "bad query"},
	{"dst://ho$t/e", "bad character"},
	{"dst://[1.2.3.4]:1/e", "invalid IP-literal"},
	{"dst://[::1/e", "missing ']'"},
	{"dst://1.2.3.256/e", "bad IPv4 address"},
	{"dst://a..b/e", "bad host name"},
	{"dst://h/e%00", "control character"},
	{"dst://h/%ff", "not valid UTF-8"},
	{"dst://h/" + strings.Repeat("x", 4097), "at most 4096"},
	{"dst+unix://relative/x.sock?export=e", "not absolute"},
	{"dst+unix://?export=e", "empty unix socket path"},
	{"dst+unix:///" + strings.Repeat("d", 120), "at most 107"},
	{"dst+unix:///run/dst.sock?export=e&mode=0600", `unknown query key "mode"`},
	{"dst+mem://", "empty mem listener name"},
	{"dst+mem://a!b/e", "bad character"},
	{"dst+mem://a/b/c", "more than one segment"},
}

func TestParseURLBad(t *testing.T) {
	for _, tc := range badURLs {
		t.Run(tc.in, func(t *testing.T) {
			u, err := transport.ParseURL(tc.in)
			if err == nil {
				t.Fatalf("ParseURL(%q) = %#v, want an error", tc.in, u)
			}
			checkURLError(t, err, tc.want)
		})
	}
}

// checkURLError checks that err is a *URLError whose message names the
// problem and lists the accepted forms.
func checkURLError(t *testing.T, err error, want string) {
	t.Helper()
	var ue *transport.URLError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not a *URLError", err, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, want) {
		t.Errorf("error %q does not mention %q", msg, want)
	}
	for _, form := range []string{
		"accepted: ",
		"dst://host:port/export",
		"dst://[v6addr]:port/export",
		"dst+unix:///path/to.sock?export=name",
		"dst+mem://name/export",
	} {
		if !strings.Contains(msg, form) {
			t.Errorf("error %q does not list %q", msg, form)
		}
	}
}

func TestURLErrorFormat(t *testing.T) {
	_, err := transport.ParseURL("foo://x")
	want := `bad URL "foo://x": unknown scheme "foo"; accepted: dst://host:port/export, dst://[v6addr]:port/export, dst://host/export (port 10811), `
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error = %v, want it to start with %q", err, want)
	}
	// Unwrap gives the cause where there is one.
	_, err = transport.ParseURL("dst://h/e?%zz")
	var ue *transport.URLError
	if !errors.As(err, &ue) || ue.Unwrap() == nil {
		t.Fatalf("error %v: want a *URLError with a cause", err)
	}
}

func TestDialPortZero(t *testing.T) {
	_, u, err := transport.Dial(context.Background(), "dst://127.0.0.1:0/e", transport.Options{})
	if u == nil || u.Address != "127.0.0.1:0" {
		t.Errorf("Dial returned URL %v, want the parsed URL", u)
	}
	checkURLError(t, err, "port 0 is only valid for listening")
	if !strings.HasPrefix(err.Error(), "dial dst://127.0.0.1:0/e: ") {
		t.Errorf("error %q does not start with the dial context", err)
	}
}

func TestListenWithExport(t *testing.T) {
	l, _, err := transport.Listen(context.Background(), "dst://127.0.0.1:0/e", transport.Options{})
	if err == nil {
		l.Close()
		t.Fatal("Listen accepted a URL with an export")
	}
	checkURLError(t, err, "a listen URL names no export")
}

func TestDialBadURL(t *testing.T) {
	c, u, err := transport.Dial(context.Background(), "dst://h:1/a/b", transport.Options{})
	if c != nil || u != nil {
		t.Fatalf("Dial = %v, %v; want nil, nil", c, u)
	}
	checkURLError(t, err, "more than one segment")
}

func FuzzParseURL(f *testing.F) {
	for _, tc := range goodURLs {
		f.Add(tc.in)
	}
	for _, tc := range badURLs {
		f.Add(tc.in)
	}
	f.Add("dst://[::ffff:1.2.3.4]:5/x")
	f.Add("dst+unix:///a/./b/../c?export=%2F")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := transport.ParseURL(s)
		if err != nil {
			var ue *transport.URLError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is a %T, not a *URLError", err, err)
			}
			return
		}
		c := u.String()
		u2, err := transport.ParseURL(c)
		if err != nil {
			t.Fatalf("ParseURL(%q) = %#v, whose String %q does not parse: %v", s, u, c, err)
		}
		if !reflect.DeepEqual(u, u2) {
			t.Fatalf("ParseURL(%q) = %#v; its String %q parses to %#v", s, u, c, u2)
		}
		if c2 := u2.String(); c2 != c {
			t.Fatalf("String not stable: %q then %q", c, c2)
		}
	})
}
