package export

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/dst-dev/dst/transport"
)

// Access is what a peer may do with an export.
type Access uint8

const (
	// Deny: the peer is not on the list. For an ACL.AllowAll, Deny (the
	// zero value) means "no allow-all".
	Deny Access = iota
	// ReadOnly sessions may read and flush.
	ReadOnly
	// ReadWrite sessions may also write, discard and write zeroes
	// (unless the export is read-only).
	ReadWrite
)

// String returns "deny", "ro" or "rw".
func (a Access) String() string {
	switch a {
	case Deny:
		return "deny"
	case ReadOnly:
		return "ro"
	case ReadWrite:
		return "rw"
	}
	return fmt.Sprintf("Access(%d)", uint8(a))
}

// ParseAccess reads "rw" or "ro".
func ParseAccess(s string) (Access, error) {
	switch s {
	case "rw":
		return ReadWrite, nil
	case "ro":
		return ReadOnly, nil
	}
	return Deny, fmt.Errorf("access right %q: want rw or ro", s)
}

// A Rule grants Access to the peers in Prefix, or, with Local, to the
// peers that have no IP address: Unix-socket peers and in-process (mem
// transport) peers, or, with Cert, to NBD clients that present a
// verified TLS client certificate with that identity.
type Rule struct {
	Prefix netip.Prefix // masked; IPv4 prefixes are 4-byte (never ::ffff:a.b.c.d)
	Local  bool         // the rule is "unix=rw|ro"; Prefix is unused
	// Cert, if not empty, makes the rule "cert:NAME=rw|ro": it matches an
	// NBD client whose TLS certificate verified against the listener's
	// client CAs and whose subject common name, or one of whose DNS
	// subject alternative names, is NAME (exactly). Prefix is unused.
	// DST clients have no certificates: these rules never match them.
	Cert   string
	Access Access // ReadOnly or ReadWrite
}

// certPrefix starts a certificate identity rule.
const certPrefix = "cert:"

// String returns the rule as ParseRule reads it: "10.0.0.0/8=rw",
// "unix=ro", "cert:backup-host=ro".
func (r Rule) String() string {
	switch {
	case r.Local:
		return "unix=" + r.Access.String()
	case r.Cert != "":
		return certPrefix + r.Cert + "=" + r.Access.String()
	}
	return r.Prefix.String() + "=" + r.Access.String()
}

// ParseRule reads a rule "CIDR=rw|ro" (a bare address is a /32 or /128;
// an IPv4-mapped IPv6 prefix is turned into its IPv4 form), "unix=rw|ro"
// for peers without an IP address, or "cert:NAME=rw|ro" for NBD clients
// with a verified TLS certificate for NAME (its common name or a DNS
// name; NAME may contain "=": the access is after the last one).
func ParseRule(s string) (Rule, error) {
	who, right, ok := strings.Cut(s, "=")
	if strings.HasPrefix(s, certPrefix) {
		i := strings.LastIndex(s, "=")
		who, right, ok = s[:max(i, 0)], s[i+1:], i >= 0
	}
	if !ok {
		return Rule{}, fmt.Errorf("access rule %q: want CIDR=rw|ro, unix=rw|ro or cert:NAME=rw|ro", s)
	}
	a, err := ParseAccess(right)
	if err != nil {
		return Rule{}, fmt.Errorf("access rule %q: %w", s, err)
	}
	if who == "unix" {
		return Rule{Local: true, Access: a}, nil
	}
	if name, isCert := strings.CutPrefix(who, certPrefix); isCert {
		if err := validCertName(name); err != nil {
			return Rule{}, fmt.Errorf("access rule %q: %w", s, err)
		}
		return Rule{Cert: name, Access: a}, nil
	}
	if strings.Contains(who, "%") {
		return Rule{}, fmt.Errorf("access rule %q: IPv6 zones are not allowed", s)
	}
	var p netip.Prefix
	if strings.Contains(who, "/") {
		p, err = netip.ParsePrefix(who)
	} else {
		var ip netip.Addr
		ip, err = netip.ParseAddr(who)
		if err == nil {
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
	}
	if err != nil {
		return Rule{}, fmt.Errorf("access rule %q: %q is not an IP address or CIDR prefix (e.g. 192.168.1.0/24, fd00::/8)", s, who)
	}
	return Rule{Prefix: canonPrefix(p), Access: a}, nil
}

// validCertName checks the NAME of a cert:NAME rule: not empty, printable
// and at most 255 bytes (a DNS name's limit; common names are shorter).
func validCertName(name string) error {
	if name == "" {
		return errors.New("empty certificate name after cert:")
	}
	if len(name) > 255 {
		return fmt.Errorf("certificate name of %d bytes, at most 255", len(name))
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("control character in the certificate name")
		}
	}
	return nil
}

// canonPrefix masks p and turns an IPv4-mapped IPv6 prefix of at least 96
// bits into the IPv4 prefix (peers are compared unmapped).
func canonPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// ACL is the access list checked at accept, before any handshake, and
// again at every handshake (including resumes).
//
// IP peers (TCP over IPv4 or IPv6) get the Access of the most specific
// Rule whose Prefix contains their address (an IPv4 peer of a dual-stack
// listener is compared as IPv4), or AllowAll if none does; with AllowAll
// Deny they are closed at accept without a handshake.
//
// NBD clients that presented a verified TLS client certificate get the
// best Access of the Rules whose Cert is one of its identities (subject
// common name, DNS names); a certificate no rule names, and clients
// without one, fall back to the address rules above. DST clients are
// judged by address only.
//
// Peers without an IP address — Unix sockets, whose access is controlled
// by the socket file's permissions (mode 0660), and in-process mem peers —
// get ReadWrite unless a rule "unix=ro" (Rule.Local) says otherwise. Their
// credentials (uid, gid, pid) are logged.
//
// An ACL with no rule and no AllowAll is a configuration error: an
// exporter open to everyone must say so with AllowAll.
type ACL struct {
	Rules []Rule
	// AllowAll is the access of IP peers no rule matches: Deny (the
	// default: they are refused), ReadOnly or ReadWrite.
	AllowAll Access
}

// ErrNoACL is returned by New and SetAccess for an empty ACL.
var ErrNoACL = errors.New("no access list: add --allow CIDR=rw|ro, or --allow-all=rw|ro if you really mean everyone")

// validate checks the rules and returns the lookup table.
func (a ACL) compile() (*aclTable, error) {
	if len(a.Rules) == 0 && a.AllowAll == Deny {
		return nil, ErrNoACL
	}
	if a.AllowAll > ReadWrite {
		return nil, fmt.Errorf("access list: bad allow-all access %v", a.AllowAll)
	}
	t := &aclTable{allowAll: a.AllowAll, local: ReadWrite}
	seen := map[netip.Prefix]Rule{}
	haveLocal := false
	for _, r := range a.Rules {
		if r.Access != ReadOnly && r.Access != ReadWrite {
			return nil, fmt.Errorf("access rule %v: access must be ro or rw", r)
		}
		if r.Cert != "" {
			if err := validCertName(r.Cert); err != nil {
				return nil, fmt.Errorf("access rule %v: %w", r, err)
			}
			if t.certs == nil {
				t.certs = map[string]Access{}
			}
			if _, dup := t.certs[r.Cert]; dup {
				return nil, fmt.Errorf("access list: certificate name %q appears twice", r.Cert)
			}
			t.certs[r.Cert] = r.Access
			continue
		}
		if r.Local {
			if haveLocal {
				return nil, fmt.Errorf("access list: more than one unix=rw|ro rule")
			}
			haveLocal = true
			t.local = r.Access
			continue
		}
		if !r.Prefix.IsValid() {
			return nil, fmt.Errorf("access rule %v: invalid prefix", r)
		}
		p := canonPrefix(r.Prefix)
		if prev, dup := seen[p]; dup {
			return nil, fmt.Errorf("access list: prefix %v appears twice (%v and %v)", p, prev, r)
		}
		seen[p] = r
		t.rules = append(t.rules, Rule{Prefix: p, Access: r.Access})
	}
	// Most specific first: the first match wins.
	slices.SortStableFunc(t.rules, func(x, y Rule) int { return y.Prefix.Bits() - x.Prefix.Bits() })
	return t, nil
}

// aclTable is a compiled ACL.
type aclTable struct {
	rules    []Rule // most specific first
	allowAll Access
	local    Access
	certs    map[string]Access // cert:NAME rules
}

// peer describes a connection's remote end for access control and logs.
type peer struct {
	ip    netip.Addr // valid for IP peers
	local bool       // unix or mem
	desc  string     // for logs: "10.0.0.1:5000", "unix uid=0 gid=0 pid=12", "mem:name"
}

func peerOf(c net.Conn) peer {
	if ip, ok := transport.PeerIP(c); ok {
		return peer{ip: ip, desc: c.RemoteAddr().String()}
	}
	if uid, gid, pid, ok := transport.PeerCred(c); ok {
		return peer{local: true, desc: fmt.Sprintf("unix uid=%d gid=%d pid=%d", uid, gid, pid)}
	}
	a := c.RemoteAddr()
	if a == nil {
		return peer{local: true, desc: "local"}
	}
	return peer{local: true, desc: a.Network() + ":" + a.String()}
}

// lookup returns the access of p and the rule that decided it (for logs).
func (t *aclTable) lookup(p peer) (Access, string) {
	if p.local || !p.ip.IsValid() {
		return t.local, "unix"
	}
	for _, r := range t.rules {
		if r.Prefix.Contains(p.ip) {
			return r.Access, r.Prefix.String()
		}
	}
	if t.allowAll != Deny {
		return t.allowAll, "allow-all"
	}
	return Deny, "no matching rule"
}

// hasCertRules tells whether a certificate may grant access that the
// peer's address does not.
func (t *aclTable) hasCertRules() bool { return len(t.certs) > 0 }

// lookupCert is lookup for an NBD client whose verified TLS certificate
// has the identities ids (none: no certificate): the best access a
// cert: rule grants to one of them, else the address rules.
func (t *aclTable) lookupCert(p peer, ids []string) (Access, string) {
	best, rule := Deny, ""
	for _, id := range ids {
		if a, ok := t.certs[id]; ok && a > best {
			best, rule = a, certPrefix+id
		}
	}
	if best != Deny {
		return best, rule
	}
	return t.lookup(p)
}
