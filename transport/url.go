package transport

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// DefaultPort is the TCP port of dst:// URLs that do not give one.
const DefaultPort = 10811

// MaxExportLen is the longest export name a URL may carry, in bytes.
const MaxExportLen = 4096

// A URL names an endpoint of a transport, and for a client the export to
// attach. Its String method gives the canonical form, which ParseURL parses
// back to an equal URL.
type URL struct {
	// Scheme is the URL scheme: "dst", "dst+unix", "dst+mem".
	Scheme string
	// Transport is the name of the registered transport serving Scheme:
	// "tcp", "unix", "mem".
	Transport string
	// Address is the transport address in canonical form: host:port for
	// tcp (an IPv6 host in brackets, the port always present), an absolute
	// cleaned path for unix, the listener name for mem.
	Address string
	// Export is the export name; "" when none is given (always so for a
	// listen URL).
	Export string
	// Query holds the option keys of the query string (nodelay, keepalive,
	// sndbuf, rcvbuf, timeout; see ParseURL), validated; nil when there
	// are none. The export key is moved to Export.
	Query url.Values
}

// A URLError reports a URL that cannot be used. Its message says what is
// wrong and lists the accepted forms.
type URLError struct {
	URL    string // the URL as given
	Reason string // what is wrong with it
	Err    error  // the underlying error, if any
}

func (e *URLError) Error() string {
	return fmt.Sprintf("bad URL %q: %s; accepted: %s", e.URL, e.Reason, strings.Join(AcceptedForms(), ", "))
}

// Unwrap returns the underlying error, if any.
func (e *URLError) Unwrap() error { return e.Err }

func badURL(raw, reason string, err error) *URLError {
	return &URLError{URL: raw, Reason: reason, Err: err}
}

// queryKeys are the option keys a URL query may carry, besides "export".
var queryKeys = []string{"keepalive", "nodelay", "rcvbuf", "sndbuf", "timeout"}

// ParseURL parses a transport URL. The accepted forms are those of the
// registered transports (see AcceptedForms):
//
//	dst://host:port/export          TCP; host is a name or an IPv4 address
//	dst://[v6addr]:port/export      TCP over IPv6
//	dst://host/export               TCP on DefaultPort
//	dst+unix:///path/to.sock?export=name
//	dst+mem://name/export           in-process (dst+mem://name?export=name too)
//
// A listen URL has no export: dst://0.0.0.0:10811, dst://[::]:10811,
// dst+unix:///run/dst.sock. Port 0 parses (a listener then gets an ephemeral
// port) but cannot be dialled.
//
// Besides export, the query may set options that override the caller's
// Options: nodelay=true|false, keepalive=DURATION|off, sndbuf=BYTES,
// rcvbuf=BYTES, timeout=DURATION (dial timeout). Any other key is an error.
//
// Errors are *URLError.
func ParseURL(s string) (*URL, error) {
	bad := func(reason string, err error) (*URL, error) {
		return nil, badURL(s, reason, err)
	}
	if s == "" {
		return bad("empty URL", nil)
	}
	pu, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		reason := err.Error()
		// net/url checks ports: say it in our words.
		if rest, ok := strings.CutPrefix(reason, "invalid port "); ok {
			port, _ := strconv.Unquote(strings.TrimSuffix(rest, " after host"))
			reason = fmt.Sprintf("non-numeric port %q", strings.TrimPrefix(port, ":"))
		}
		return bad(reason, err)
	}
	if pu.Scheme == "" {
		return bad("missing scheme", nil)
	}
	t := lookupScheme(pu.Scheme)
	if t == nil {
		return bad(fmt.Sprintf("unknown scheme %q", pu.Scheme), nil)
	}
	if pu.Opaque != "" {
		return bad(fmt.Sprintf("missing // after %q", pu.Scheme+":"), nil)
	}
	if pu.User != nil {
		return bad("user info is not allowed", nil)
	}
	if pu.Fragment != "" {
		return bad("a fragment (#...) is not allowed", nil)
	}

	u := &URL{Scheme: pu.Scheme, Transport: t.Name()}

	// The address: the authority, or for scheme:///path the path.
	addr := pu.Host
	pathForm := addr == ""
	if pathForm {
		addr = pu.Path
	}
	if ap, ok := t.(AddressParser); ok {
		addr, err = ap.ParseAddress(addr)
		if err != nil {
			return bad(err.Error(), err)
		}
	} else if addr == "" {
		return bad("empty address", nil)
	}
	u.Address = addr

	// The export: a single path segment after the authority, or ?export=.
	pathExport := ""
	if !pathForm {
		p := pu.EscapedPath()
		if p != "" && p != "/" {
			seg := strings.TrimPrefix(p, "/")
			if strings.Contains(seg, "/") {
				return bad(fmt.Sprintf("export path %q has more than one segment", p), nil)
			}
			pathExport, err = url.PathUnescape(seg)
			if err != nil {
				return bad(fmt.Sprintf("bad export path %q", p), err)
			}
			if pathExport == "" {
				return bad("empty export name", nil)
			}
		}
	}

	q, err := url.ParseQuery(pu.RawQuery)
	if err != nil {
		return bad("bad query: "+err.Error(), err)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	haveQueryExport := false
	for _, k := range keys {
		vs := q[k]
		if len(vs) != 1 {
			return bad(fmt.Sprintf("query key %q given %d times", k, len(vs)), nil)
		}
		v := vs[0]
		if k == "export" {
			if v == "" {
				return bad("empty export name", nil)
			}
			haveQueryExport = true
			u.Export = v
			continue
		}
		if !slices.Contains(queryKeys, k) {
			return bad(fmt.Sprintf("unknown query key %q (known: export, %s)", k, strings.Join(queryKeys, ", ")), nil)
		}
		if err := checkQueryValue(k, v); err != nil {
			return bad(err.Error(), err)
		}
		if u.Query == nil {
			u.Query = url.Values{}
		}
		u.Query.Set(k, v)
	}
	if pathExport != "" {
		if haveQueryExport {
			return bad("export given both in the path and in the query", nil)
		}
		u.Export = pathExport
	}
	if err := checkExport(u.Export); err != nil {
		return bad(err.Error(), err)
	}
	return u, nil
}

// String returns the canonical form of u: scheme://address/export for
// transports whose address is a host or a name, scheme:///path?export=name
// for those whose address is a path; option keys follow in the query, in
// sorted order.
func (u *URL) String() string {
	if u == nil {
		return "<nil>"
	}
	q := url.Values{}
	for k, v := range u.Query {
		q[k] = v
	}
	pu := url.URL{Scheme: u.Scheme}
	if strings.HasPrefix(u.Address, "/") {
		pu.Path = u.Address
		if u.Export != "" {
			q.Set("export", u.Export)
		}
	} else {
		pu.Host = u.Address
		if u.Export != "" {
			pu.Path = "/" + u.Export
		}
	}
	pu.RawQuery = q.Encode()
	return pu.String()
}

func checkExport(name string) error {
	if len(name) > MaxExportLen {
		return fmt.Errorf("export name is %d bytes long (at most %d)", len(name), MaxExportLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("export name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if r == '/' {
			return fmt.Errorf("export name %q contains '/'", name)
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("export name %q contains a control character", name)
		}
	}
	return nil
}

func checkQueryValue(k, v string) error {
	switch k {
	case "nodelay":
		if _, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("query key nodelay=%q: want true or false", v)
		}
	case "keepalive":
		if v == "off" {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("query key keepalive=%q: want a duration such as 15s, or off", v)
		}
	case "sndbuf", "rcvbuf":
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("query key %s=%q: want a byte count", k, v)
		}
	case "timeout":
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("query key timeout=%q: want a positive duration such as 5s", v)
		}
	}
	return nil
}

// applyQuery returns o overridden by the option keys of u's query, which
// ParseURL has validated (invalid values, possible only in a URL built by
// hand, are ignored).
func (u *URL) applyQuery(o Options) Options {
	for k, vs := range u.Query {
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		switch k {
		case "nodelay":
			if b, err := strconv.ParseBool(v); err == nil {
				o.DisableNoDelay = !b
			}
		case "keepalive":
			if v == "off" {
				o.KeepAlive = -1
			} else if d, err := time.ParseDuration(v); err == nil && d >= 0 {
				o.KeepAlive = d
			}
		case "sndbuf":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				o.SendBuffer = n
			}
		case "rcvbuf":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				o.RecvBuffer = n
			}
		case "timeout":
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				o.DialTimeout = d
			}
		}
	}
	return o
}
