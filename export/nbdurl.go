package export

import (
	"fmt"
	"net"
	"net/url"
	"strconv"

	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/transport"
)

// NBDListenForms are the listen URLs ParseNBDListenURL accepts.
var NBDListenForms = []string{
	"nbd://HOST[:PORT]", "nbd://[V6ADDR][:PORT]", "nbd+unix:///?socket=/PATH",
}

// ParseNBDListenURL reads an NBD listen URL, in the forms of the NBD URI
// specification without an export (the exports are the server's):
//
//	nbd://0.0.0.0:10809   nbd://[::]:10809   nbd://127.0.0.1 (port 10809)
//	nbd+unix:///?socket=/run/dst-nbd.sock
//
// and returns the transport URL to listen on (dst://host:port or
// dst+unix:///path), checked by transport.ParseURL.
func ParseNBDListenURL(s string) (*transport.URL, error) {
	bad := func(why string) error {
		return fmt.Errorf("bad NBD listen URL %q: %s; accepted: %v", s, why, NBDListenForms)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, bad(err.Error())
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return nil, bad("no user, fragment or opaque part allowed")
	}
	if u.Path != "" && u.Path != "/" {
		return nil, bad("a listen URL names no export (exports are given with --export)")
	}
	var t string
	switch u.Scheme {
	case "nbd":
		if u.RawQuery != "" {
			return nil, bad("no query allowed")
		}
		host, port := u.Hostname(), u.Port()
		if host == "" {
			return nil, bad("no host (use 0.0.0.0 or [::] for every address)")
		}
		if port == "" {
			port = strconv.Itoa(nbd.DefaultPort)
		}
		t = "dst://" + net.JoinHostPort(host, port)
	case "nbd+unix":
		q := u.Query()
		sock := q.Get("socket")
		if u.Host != "" || sock == "" || len(q) != 1 || len(q["socket"]) != 1 {
			return nil, bad("want nbd+unix:///?socket=/PATH and nothing else")
		}
		t = "dst+unix://" + sock
	default:
		return nil, bad("scheme must be nbd or nbd+unix")
	}
	tu, err := transport.ParseURL(t)
	if err != nil {
		return nil, bad(err.Error())
	}
	return tu, nil
}

// NBDURL is the NBD form of a bound listener's transport URL, as clients
// write it (nbd://host:port, nbd+unix:///?socket=/path).
func NBDURL(u *transport.URL) string {
	if u.Transport == "unix" {
		return "nbd+unix:///?socket=" + u.Address
	}
	return "nbd://" + u.Address
}
