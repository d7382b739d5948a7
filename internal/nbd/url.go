package nbd

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// URLForms are the client URLs ParseURL accepts (the NBD URI
// specification's nbd and nbd+unix schemes).
var URLForms = []string{
	"nbd://HOST[:PORT]/EXPORT", "nbd://[V6ADDR][:PORT]/EXPORT", "nbd+unix:///EXPORT?socket=/PATH",
}

// URL is an NBD server and export, as a client names them.
type URL struct {
	// Network is "tcp" or "unix"; Address is host:port (the port always
	// present, an IPv6 host in brackets) or the socket's path.
	Network, Address string
	// Export is the export name; "" asks for the server's default export.
	Export string
}

// String is the URL in its canonical NBD URI form.
func (u URL) String() string {
	e := (&url.URL{Path: "/" + u.Export}).EscapedPath()
	if u.Network == "unix" {
		return "nbd+unix://" + e + "?socket=" + u.Address
	}
	return "nbd://" + u.Address + e
}

// IsURL reports whether s uses one of the NBD schemes (so that callers can
// send it to ParseURL rather than to their own parser).
func IsURL(s string) bool {
	for _, p := range []string{"nbd://", "nbd+unix://", "nbds://", "nbds+unix://"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// ParseURL reads a client URL:
//
//	nbd://server/disk0   nbd://server:10809/disk0   nbd://[fd00::1]/disk0
//	nbd://server         (the server's default export, "")
//	nbd+unix:///disk0?socket=/run/nbd.sock
//
// The export is the path without its leading slash, percent-decoded.
func ParseURL(s string) (URL, error) {
	bad := func(why string) error {
		return fmt.Errorf("bad NBD URL %q: %s; accepted: %s", s, why, strings.Join(URLForms, ", "))
	}
	u, err := url.Parse(s)
	if err != nil {
		return URL{}, bad(err.Error())
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return URL{}, bad("no user, fragment or opaque part allowed")
	}
	export := strings.TrimPrefix(u.Path, "/")
	if len(export) > MaxStringLen {
		return URL{}, bad(fmt.Sprintf("export name is %d bytes, at most %d", len(export), MaxStringLen))
	}
	switch u.Scheme {
	case "nbd":
		if u.RawQuery != "" {
			return URL{}, bad("no query allowed with nbd:// (the socket key is for nbd+unix://)")
		}
		host, port := u.Hostname(), u.Port()
		if host == "" {
			return URL{}, bad("no server host")
		}
		if port == "" {
			port = strconv.Itoa(DefaultPort)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return URL{}, bad(fmt.Sprintf("port %q is not 1..65535", port))
		}
		return URL{Network: "tcp", Address: net.JoinHostPort(host, port), Export: export}, nil
	case "nbd+unix":
		q := u.Query()
		sock := q.Get("socket")
		if u.Host != "" {
			return URL{}, bad("a unix URL has no host: write nbd+unix:///EXPORT?socket=/PATH (three slashes)")
		}
		if sock == "" || len(q) != 1 || len(q["socket"]) != 1 {
			return URL{}, bad("want exactly one query key, socket=/PATH")
		}
		if !strings.HasPrefix(sock, "/") {
			return URL{}, bad("the socket path must be absolute")
		}
		return URL{Network: "unix", Address: sock, Export: export}, nil
	case "nbds", "nbds+unix":
		return URL{}, bad("TLS (nbds) is not supported by this client yet; use nbd:// over a trusted network or a TLS tunnel")
	}
	return URL{}, bad("scheme must be nbd or nbd+unix")
}
