package export_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/testpki"
	"github.com/dst-dev/dst/transport"
)

// nbdPKI makes a CA and a server certificate for 127.0.0.1 and writes
// them as DIR/ca-cert.pem, DIR/server-cert.pem and DIR/server-key.pem (the
// layout libnbd's tls-certificates=DIR expects).
func nbdPKI(t *testing.T) (server, client *tls.Config, dir string) {
	t.Helper()
	ca := testpki.New(t, "dst test CA")
	cert, certPEM, keyPEM := ca.Issue(true, "127.0.0.1")
	dir = t.TempDir()
	for name, b := range map[string][]byte{"server-cert.pem": certPEM, "ca-cert.pem": ca.PEM, "server-key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, dir
}

// startNBDTLS serves cfg to NBD clients with o on a loopback port.
func startNBDTLS(t *testing.T, cfg export.Config, o export.NBDOptions) string {
	t.Helper()
	_, addr := startNBDWith(t, cfg, o)
	return addr
}

// startNBDWith is startNBDTLS that also returns the server.
func startNBDWith(t *testing.T, cfg export.Config, o export.NBDOptions) (*export.Server, string) {
	t.Helper()
	cfg.Log = exporttest.TestLogger(t)
	s, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.ListenURL(context.Background(), mustNBDURL(t, "nbd://127.0.0.1:0"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeNBDWith(context.Background(), l, o) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-done
	})
	return s, l.Addr().String()
}

func mustNBDURL(t *testing.T, s string) *transport.URL {
	t.Helper()
	u, err := export.ParseNBDListenURL(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestNBDTLS: with RequireTLS a plain client is refused TLS_REQD; a
// client that starts TLS is served, requests and replies over TLS.
func TestNBDTLS(t *testing.T) {
	srv, cli, _ := nbdPKI(t)
	path := exporttest.File(t, testSize)
	addr := startNBDTLS(t, config(path), export.NBDOptions{TLS: srv, RequireTLS: true})

	plain, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_ = plain.SetDeadline(time.Now().Add(10 * time.Second))
	var oe *nbd.OptionError
	if _, _, err := nbd.ClientGo(plain, nbd.ClientOptions{Export: "disk"}); !errors.As(err, &oe) || oe.Type != nbd.RepErrTLSReqd {
		t.Fatalf("plain client: %v, want TLS_REQD", err)
	}

	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
	tc, info, structured, err := nbd.ClientConnect(raw, nbd.ClientOptions{Export: "disk", Structured: true, BlockSize: true, TLS: cli})
	if err != nil || info.Size != testSize || !structured {
		t.Fatalf("TLS client: %+v %v", info, err)
	}
	c := &nbdClient{t: t, c: tc, info: info, structured: structured}
	data := pattern(64<<10, 11)
	if r := c.do(req(nbd.CmdWrite, 1, 0, uint32(len(data))), data); r.errno != 0 {
		t.Fatalf("write over TLS: %v", r.errno)
	}
	if r := c.do(req(nbd.CmdRead, 2, 0, uint32(len(data))), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read over TLS: %v", r.errno)
	}
	if got := fileAt(t, path, 0, len(data)); !bytes.Equal(got, data) {
		t.Fatal("file differs after a write over TLS")
	}
}

// TestNBDPeerNbdinfoTLS: libnbd's nbdinfo over nbds:// with the CA.
func TestNBDPeerNbdinfoTLS(t *testing.T) {
	needTool(t, "nbdinfo", "libnbd-bin")
	srv, _, dir := nbdPKI(t)
	addr := startNBDTLS(t, config(exporttest.File(t, testSize)), export.NBDOptions{TLS: srv, RequireTLS: true})
	out := runTool(t, "nbdinfo", "nbds://"+addr+"/disk?tls-certificates="+dir)
	if !strings.Contains(out, "with TLS") || !strings.Contains(out, "export-size: 16777216") {
		t.Fatalf("nbdinfo over TLS:\n%s", out)
	}
}
