package export

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // Rule.String(), or "" for an error
		err  string
	}{
		{"10.0.0.0/8=rw", "10.0.0.0/8=rw", ""},
		{"10.1.2.3/8=ro", "10.0.0.0/8=ro", ""}, // masked
		{"192.168.1.7=rw", "192.168.1.7/32=rw", ""},
		{"fd00::/8=ro", "fd00::/8=ro", ""},
		{"::1=rw", "::1/128=rw", ""},
		{"::ffff:10.0.0.0/104=rw", "10.0.0.0/8=rw", ""}, // IPv4-mapped → IPv4
		{"unix=ro", "unix=ro", ""},
		{"unix=rw", "unix=rw", ""},
		{"0.0.0.0/0=ro", "0.0.0.0/0=ro", ""},
		{"10.0.0.0/8", "", "want CIDR=rw|ro"},
		{"10.0.0.0/8=rwx", "", "want rw or ro"},
		{"10.0.0.0/33=rw", "", "not an IP address"},
		{"host.example=rw", "", "not an IP address"},
		{"fe80::1%eth0=rw", "", "zones"},
		{"=rw", "", "not an IP address"},
	} {
		r, err := ParseRule(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseRule(%q) = %v, %v; want error containing %q", tc.in, r, err, tc.err)
			}
			continue
		}
		if err != nil || r.String() != tc.want {
			t.Errorf("ParseRule(%q) = %v, %v; want %s", tc.in, r, err, tc.want)
		}
	}
}

func rules(t *testing.T, ss ...string) []Rule {
	var rs []Rule
	for _, s := range ss {
		r, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

func TestACLCompile(t *testing.T) {
	if _, err := (ACL{}).compile(); !errors.Is(err, ErrNoACL) ||
		err.Error() != "no access list: add --allow CIDR=rw|ro, or --allow-all=rw|ro if you really mean everyone" {
		t.Fatalf("empty ACL: %v", err)
	}
	for _, tc := range []struct {
		acl ACL
		err string
	}{
		{ACL{Rules: rules(t, "10.0.0.0/8=rw", "10.1.0.0/8=ro")}, "appears twice"},
		{ACL{Rules: rules(t, "unix=rw", "unix=ro")}, "more than one unix"},
		{ACL{Rules: []Rule{{Access: ReadWrite}}}, "invalid prefix"},
		{ACL{Rules: []Rule{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}, "must be ro or rw"},
		{ACL{AllowAll: 7}, "allow-all"},
	} {
		if _, err := tc.acl.compile(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: %v, want %q", tc.acl, err, tc.err)
		}
	}
	for _, ok := range []ACL{{AllowAll: ReadOnly}, {Rules: rules(t, "unix=ro")}} {
		if _, err := ok.compile(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

func TestACLLookup(t *testing.T) {
	acl := ACL{Rules: rules(t, "10.0.0.0/8=rw", "10.1.0.0/16=ro", "10.1.2.3=rw", "fd00::/8=ro", "unix=ro")}
	tab, err := acl.compile()
	if err != nil {
		t.Fatal(err)
	}
	withAll := acl
	withAll.AllowAll = ReadOnly
	tabAll, err := withAll.compile()
	if err != nil {
		t.Fatal(err)
	}
	ip := func(s string) peer { return peer{ip: netip.MustParseAddr(s)} }
	for _, tc := range []struct {
		p        peer
		want     Access
		wantAll  Access
		wantRule string
	}{
		{ip("10.9.9.9"), ReadWrite, ReadWrite, "10.0.0.0/8"},
		{ip("10.1.9.9"), ReadOnly, ReadOnly, "10.1.0.0/16"}, // most specific wins
		{ip("10.1.2.3"), ReadWrite, ReadWrite, "10.1.2.3/32"},
		{ip("fd00::5"), ReadOnly, ReadOnly, "fd00::/8"},
		{ip("192.168.0.1"), Deny, ReadOnly, "no matching rule"},
		{ip("fe80::1"), Deny, ReadOnly, "no matching rule"},
		{peer{local: true}, ReadOnly, ReadOnly, "unix"},
	} {
		got, rule := tab.lookup(tc.p)
		if got != tc.want || rule != tc.wantRule {
			t.Errorf("%v: %v by %q, want %v by %q", tc.p.ip, got, rule, tc.want, tc.wantRule)
		}
		if got, _ := tabAll.lookup(tc.p); got != tc.wantAll {
			t.Errorf("%v with allow-all=ro: %v, want %v", tc.p.ip, got, tc.wantAll)
		}
	}
	// Local peers are rw without a unix rule.
	tab2, _ := ACL{Rules: rules(t, "10.0.0.0/8=ro")}.compile()
	if a, _ := tab2.lookup(peer{local: true}); a != ReadWrite {
		t.Fatalf("local peer without a unix rule: %v", a)
	}
}

// TestNewErrors: New refuses bad configurations before anything listens,
// and says why.
func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f.img")
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	acl := ACL{Rules: rules(t, "127.0.0.1=rw")}
	exp := func(name, path string) []ExportConfig { return []ExportConfig{{Name: name, Path: path}} }
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"no exports", Config{Access: acl}, "no exports"},
		{"no acl", Config{Exports: exp("a", file)}, "no access list: add --allow CIDR=rw|ro"},
		{"bad name", Config{Exports: exp("a/b", file), Access: acl}, `export "a/b": bad name`},
		{"dot name", Config{Exports: exp("..", file), Access: acl}, "bad name"},
		{"empty name", Config{Exports: exp("", file), Access: acl}, "bad name"},
		{"duplicate", Config{Exports: append(exp("a", file), exp("a", file)...), Access: acl}, `export "a" is given twice`},
		{"missing file", Config{Exports: exp("a", filepath.Join(dir, "nope")), Access: acl}, "does not exist"},
		{"directory", Config{Exports: exp("a", dir), Access: acl}, "is a directory"},
		{"empty path", Config{Exports: exp("a", ""), Access: acl}, "empty path"},
		{"max transfer", Config{Exports: exp("a", file), Access: acl, MaxTransfer: 64 << 20}, "exceeds the protocol limit"},
		{"max inflight", Config{Exports: exp("a", file), Access: acl, MaxInflight: 70000}, "exceeds the protocol limit"},
		{"second export fails", Config{Exports: append(exp("a", file), exp("b", filepath.Join(dir, "nope"))...), Access: acl}, `export "b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			if err == nil {
				s.Close()
				t.Fatalf("New succeeded, want %q", tc.err)
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("New: %v, want %q", err, tc.err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, _, err := Config{
		Exports: []ExportConfig{{Name: "a", Path: "/x"}},
		Access:  ACL{AllowAll: ReadOnly},
		Name:    "host\x1b[31m\nname",
	}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "host?[31m?name" {
		t.Fatalf("exporter name %q: control characters not replaced", cfg.Name)
	}
	if cfg.MaxInflight != 1024 || cfg.MaxTransfer != 1<<20 || cfg.MaxBufferBytes != DefaultMaxBufferBytes ||
		cfg.SessionLinger != DefaultSessionLinger || cfg.IdleTimeout != DefaultIdleTimeout || cfg.Log == nil {
		t.Fatalf("defaults: %+v", cfg)
	}
	long, _, err := Config{Exports: []ExportConfig{{Name: "a", Path: "/x"}}, Access: ACL{AllowAll: ReadOnly},
		Name: strings.Repeat("é", 200)}.withDefaults()
	if err != nil || len(long.Name) > 255 {
		t.Fatalf("long name: %d bytes, %v", len(long.Name), err)
	}
}
