package export_test

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/testpki"
)

// certServer serves a 1 MiB export over NBD with TLS that verifies client
// certificates against ca (auth: IfGiven or Require) under acl.
func certServer(t *testing.T, ca *testpki.CA, auth tls.ClientAuthType, acl export.ACL) string {
	t.Helper()
	srvCert, _, _ := ca.Issue(true, "127.0.0.1")
	cfg := config(exporttest.File(t, 1<<20))
	cfg.Access = acl
	return startNBDTLS(t, cfg, export.NBDOptions{TLS: &tls.Config{
		Certificates: []tls.Certificate{srvCert}, MinVersion: tls.VersionTLS12,
		ClientAuth: auth, ClientCAs: ca.Pool,
	}})
}

// certDial connects with client certificate cert (none if nil) and TLS
// (if withTLS) and asks for the export.
func certDial(t *testing.T, addr string, ca *testpki.CA, withTLS bool, cert *tls.Certificate) (*nbdClient, error) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
	o := nbd.ClientOptions{Export: "disk", Structured: true, BlockSize: true}
	if withTLS {
		o.TLS = &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if cert != nil {
			// Sent whatever CAs the server names (Go's client would
			// otherwise keep a certificate of another CA to itself).
			o.TLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
	}
	c, info, structured, err := nbd.ClientConnect(raw, o)
	if err != nil {
		return nil, err
	}
	return &nbdClient{t: t, c: c, info: info, structured: structured}, nil
}

// canWrite reports whether the export was offered writable and a write
// succeeds; a read-only offer must also refuse the write with EPERM.
func canWrite(t *testing.T, c *nbdClient) bool {
	t.Helper()
	ro := c.info.Flags&nbd.FlagReadOnly != 0
	r := c.do(req(nbd.CmdWrite, 1, 0, 4096), pattern(4096, 3))
	switch {
	case ro && r.errno != nbd.EPERM:
		t.Fatalf("write on a read-only offer: %v, want EPERM", r.errno)
	case !ro && r.errno != 0:
		t.Fatalf("write on a writable offer: %v", r.errno)
	}
	if r := c.do(req(nbd.CmdRead, 2, 0, 4096), nil); r.errno != 0 {
		t.Fatalf("read: %v", r.errno)
	}
	return !ro
}

func optErr(err error) nbd.ReplyType {
	var oe *nbd.OptionError
	if errors.As(err, &oe) {
		return oe.Type
	}
	return 0
}

// TestNBDClientCertACL: with only cert: rules (the address is on no
// rule), a client certificate grants what its rule says by common name or
// DNS name; a verified certificate no rule names, no certificate, no TLS
// and a certificate from another CA get nothing.
func TestNBDClientCertACL(t *testing.T) {
	ca := testpki.New(t, "dst test CA")
	addr := certServer(t, ca, tls.VerifyClientCertIfGiven, export.ACL{Rules: []export.Rule{
		mustRule("cert:backup-host=rw"), mustRule("cert:reader.example=ro"), mustRule("10.9.0.0/16=rw"),
	}})
	backup, _, _ := ca.Issue(false, "backup-host")
	reader, _, _ := ca.Issue(false, "someone", "other.example", "reader.example")
	stranger, _, _ := ca.Issue(false, "stranger")
	rogueCA := testpki.New(t, "rogue CA")
	rogue, _, _ := rogueCA.Issue(false, "backup-host")

	c, err := certDial(t, addr, ca, true, &backup)
	if err != nil {
		t.Fatalf("backup-host: %v", err)
	}
	if !canWrite(t, c) {
		t.Fatal("cert:backup-host=rw got a read-only export")
	}
	c, err = certDial(t, addr, ca, true, &reader)
	if err != nil {
		t.Fatalf("reader.example: %v", err)
	}
	if canWrite(t, c) {
		t.Fatal("cert:reader.example=ro (a DNS name) got a writable export")
	}
	if _, err := certDial(t, addr, ca, true, &stranger); optErr(err) != nbd.RepErrPolicy {
		t.Fatalf("a verified certificate no rule names: %v, want ERR_POLICY", err)
	}
	if _, err := certDial(t, addr, ca, true, nil); optErr(err) != nbd.RepErrPolicy {
		t.Fatalf("TLS without a certificate from a denied address: %v, want ERR_POLICY", err)
	}
	if _, err := certDial(t, addr, ca, false, nil); optErr(err) != nbd.RepErrTLSReqd {
		t.Fatalf("no TLS from a denied address: %v, want TLS_REQD", err)
	}
	if _, err := certDial(t, addr, ca, true, &rogue); err == nil || optErr(err) != 0 {
		t.Fatalf("a certificate of another CA: %v, want the TLS handshake to fail", err)
	}
}

// TestNBDClientCertFallback: a client without a certificate falls back to
// its address rule (read-only here, even without TLS), one with a
// certificate named by a rule gets that rule; with
// RequireAndVerifyClientCert a client without one fails the handshake.
func TestNBDClientCertFallback(t *testing.T) {
	ca := testpki.New(t, "dst test CA")
	acl := export.ACL{Rules: []export.Rule{mustRule("127.0.0.1=ro"), mustRule("cert:backup-host=rw")}}
	addr := certServer(t, ca, tls.VerifyClientCertIfGiven, acl)
	backup, _, _ := ca.Issue(false, "backup-host")
	stranger, _, _ := ca.Issue(false, "stranger")
	for _, tc := range []struct {
		name    string
		withTLS bool
		cert    *tls.Certificate
		rw      bool
	}{
		{"plain", false, nil, false},
		{"TLS without certificate", true, nil, false},
		{"unnamed certificate", true, &stranger, false},
		{"named certificate", true, &backup, true},
	} {
		c, err := certDial(t, addr, ca, tc.withTLS, tc.cert)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := canWrite(t, c); got != tc.rw {
			t.Fatalf("%s: writable %v, want %v", tc.name, got, tc.rw)
		}
	}

	req := certServer(t, ca, tls.RequireAndVerifyClientCert, acl)
	if _, err := certDial(t, req, ca, true, nil); err == nil || optErr(err) != 0 {
		t.Fatalf("no certificate where one is required: %v, want the TLS handshake to fail", err)
	}
	c, err := certDial(t, req, ca, true, &backup)
	if err != nil || !canWrite(t, c) {
		t.Fatalf("named certificate where one is required: %v", err)
	}
}

// TestParseCertRule: cert:NAME=rw|ro, NAME may contain "=".
func TestParseCertRule(t *testing.T) {
	for in, want := range map[string]export.Rule{
		"cert:backup-host=rw":  {Cert: "backup-host", Access: export.ReadWrite},
		"cert:CN=a,O=b=ro":     {Cert: "CN=a,O=b", Access: export.ReadOnly},
		"cert:host.example=ro": {Cert: "host.example", Access: export.ReadOnly},
	} {
		r, err := export.ParseRule(in)
		if err != nil || r != want || r.String() != in {
			t.Errorf("ParseRule(%q) = %+v (%q), %v; want %+v", in, r, r.String(), err, want)
		}
	}
	for _, in := range []string{"cert:=rw", "cert:x", "cert:x=admin", "cert:a\x01b=rw"} {
		if _, err := export.ParseRule(in); err == nil {
			t.Errorf("ParseRule(%q) accepted", in)
		}
	}
	if _, err := export.New(export.Config{Exports: []export.ExportConfig{{Name: "d", Path: "/nonexistent"}},
		Access: export.ACL{Rules: []export.Rule{mustRule("cert:a=rw"), mustRule("cert:a=ro")}}}); err == nil ||
		!strings.Contains(err.Error(), "twice") {
		t.Errorf("a certificate name twice: %v", err)
	}
}

// TestNBDPeerNbdinfoClientCert: libnbd (GnuTLS) with a client certificate
// in tls-certificates=DIR (ca-cert.pem, client-cert.pem, client-key.pem)
// is admitted by its cert: rule; without one, from an address on no rule,
// it is refused.
func TestNBDPeerNbdinfoClientCert(t *testing.T) {
	needTool(t, "nbdinfo", "libnbd-bin")
	ca := testpki.New(t, "dst test CA")
	addr := certServer(t, ca, tls.VerifyClientCertIfGiven, export.ACL{Rules: []export.Rule{mustRule("cert:backup-host=ro")}})
	_, certPEM, keyPEM := ca.Issue(false, "backup-host")
	with, without := t.TempDir(), t.TempDir()
	for dir, files := range map[string]map[string][]byte{
		with:    {"ca-cert.pem": ca.PEM, "client-cert.pem": certPEM, "client-key.pem": keyPEM},
		without: {"ca-cert.pem": ca.PEM},
	} {
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	out := runTool(t, "nbdinfo", "nbds://"+addr+"/disk?tls-certificates="+with)
	if !strings.Contains(out, "with TLS") || !strings.Contains(out, "is_read_only: true") {
		t.Fatalf("nbdinfo with a client certificate:\n%s", out)
	}
	cmd := exec.Command("nbdinfo", "nbds://"+addr+"/disk?tls-certificates="+without)
	if b, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("nbdinfo without a client certificate was served:\n%s", b)
	} else if !strings.Contains(strings.ToLower(string(b)), "policy") && !strings.Contains(string(b), "denied") {
		t.Logf("nbdinfo without a client certificate (refused as expected): %s", b)
	}
}

// TestNBDSetAccessRevokes: a new access list closes the NBD connections
// whose access it reduces — a TLS client whose cert: rule is gone (served
// by goroutines), a plain client whose address rule becomes ro (served on
// a ring) — and leaves the others alone.
func TestNBDSetAccessRevokes(t *testing.T) {
	ca := testpki.New(t, "dst test CA")
	srvCert, _, _ := ca.Issue(true, "127.0.0.1")
	cfg := config(exporttest.File(t, 1<<20))
	cfg.Access = export.ACL{Rules: []export.Rule{mustRule("cert:backup-host=rw"), mustRule("127.0.0.1=rw")}}
	s, addr := startNBDWith(t, cfg, export.NBDOptions{TLS: &tls.Config{
		Certificates: []tls.Certificate{srvCert}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.Pool,
	}})
	backup, _, _ := ca.Issue(false, "backup-host")
	tlsClient, err := certDial(t, addr, ca, true, &backup)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := certDial(t, addr, ca, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	canWrite(t, tlsClient)
	canWrite(t, plain)

	// The cert rule goes: the TLS client falls back to its address
	// (still rw): it stays.
	if err := s.SetAccess(export.ACL{Rules: []export.Rule{mustRule("127.0.0.1=rw")}}); err != nil {
		t.Fatal(err)
	}
	if !canWrite(t, tlsClient) || !canWrite(t, plain) {
		t.Fatal("a connection whose access did not change lost it")
	}
	// The address becomes ro: both may write, both are closed.
	if err := s.SetAccess(export.ACL{Rules: []export.Rule{mustRule("127.0.0.1=ro")}}); err != nil {
		t.Fatal(err)
	}
	tlsClient.expectClosed()
	plain.expectClosed()

	// A read-only connection stays when the list denies writing only.
	ro, err := certDial(t, addr, ca, false, nil)
	if err != nil || canWrite(t, ro) {
		t.Fatalf("after the list became ro: %v", err)
	}
	if err := s.SetAccess(export.ACL{Rules: []export.Rule{mustRule("127.0.0.1=ro"), mustRule("10.0.0.0/8=rw")}}); err != nil {
		t.Fatal(err)
	}
	canWrite(t, ro)
	if err := s.SetAccess(export.ACL{Rules: []export.Rule{mustRule("cert:someone=rw")}}); err != nil {
		t.Fatal(err)
	}
	ro.expectClosed()
}
