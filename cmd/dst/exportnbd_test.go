package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/testpki"
	"github.com/dst-dev/dst/transport"
)

// TestExportNBDListen: dst export with only --nbd-listen (TCP port 0 and a
// Unix socket) prints the bound NBD URLs, serves NBD on both, opens no DST
// listener, and stops cleanly on SIGTERM.
func TestExportNBDListen(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	proc := startDst(t, "export", "--export", "disk="+exporttest.File(t, 1<<20), "--allow", "127.0.0.1=rw",
		"--nbd-listen", "nbd://127.0.0.1:0", "--nbd-listen", "nbd+unix:///?socket="+sock)
	var urls []string
	for range 2 {
		line := proc.line(t)
		u, ok := strings.CutPrefix(line, "listening ")
		if !ok {
			t.Fatalf("line %q; stderr:\n%s", line, proc.stderr.String())
		}
		urls = append(urls, u)
	}
	addr, ok := strings.CutPrefix(urls[0], "nbd://127.0.0.1:")
	if !ok || addr == "0" || urls[1] != "nbd+unix:///?socket="+sock {
		t.Fatalf("listening %q", urls)
	}
	for _, dial := range []func() (net.Conn, error){
		func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+addr) },
		func() (net.Conn, error) { return net.Dial("unix", sock) },
	} {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		info, _, err := nbd.ClientGo(c, nbd.ClientOptions{Export: "disk", BlockSize: true})
		c.Close()
		if err != nil || info.Size != 1<<20 || info.Flags&nbd.FlagReadOnly != 0 {
			t.Fatalf("NBD handshake: %+v, %v", info, err)
		}
	}
	proc.stop(t, 20*time.Second)
	// No DST listener: its log line is "listening" without "(NBD)".
	if strings.Contains(proc.stderr.String(), "\tlistening\t") || strings.Count(proc.stderr.String(), "\tlistening (NBD)\t") != 2 {
		t.Errorf("want exactly the two NBD listeners in the log:\n%s", proc.stderr.String())
	}
}

func TestExportNBDListenBadURL(t *testing.T) {
	for _, u := range []string{"nbd://127.0.0.1:1/disk", "dst://127.0.0.1:1", "nbd+unix:///disk"} {
		err := run("export", "--export", "a=/x", "--allow", "127.0.0.1=rw", "--nbd-listen", u)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--nbd-listen") {
			t.Errorf("--nbd-listen %s: %v, want a usage error", u, err)
		}
	}
}

func TestExportNBDTLSFlags(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"export", "--export", "a=" + exporttest.File(t, 1<<20), "--allow", "127.0.0.1=rw", "--nbd-listen", "nbd://127.0.0.1:0"}
	for _, tc := range []struct {
		args  []string
		want  string
		usage bool
	}{
		{[]string{"--nbd-tls-cert", junk}, "go together", true},
		{[]string{"--nbd-tls-require"}, "needs --nbd-tls-cert", true},
		{[]string{"--nbd-tls-cert", junk, "--nbd-tls-key", junk}, "--nbd-tls-cert", false},
		{[]string{"--nbd-tls-ca", junk}, "--nbd-tls-ca (nbd.tls_ca) needs --nbd-tls-cert", true},
		{[]string{"--nbd-tls-cert", junk, "--nbd-tls-key", junk, "--nbd-tls-require-client-cert"}, "needs --nbd-tls-ca", true},
	} {
		err := run(append(append([]string{}, base...), tc.args...)...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.As(err, &ue) != tc.usage {
			t.Errorf("%v: %v; want an error mentioning %q (usage error: %v)", tc.args, err, tc.want, tc.usage)
		}
	}
}

// writeTLSFiles writes a server certificate of ca, and ca as the client CA.
func writeTLSFiles(t *testing.T, ca *testpki.CA, dir string) {
	t.Helper()
	_, cert, key := ca.Issue(true, "127.0.0.1")
	for name, b := range map[string][]byte{"cert.pem": cert, "key.pem": key, "ca.pem": ca.PEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReloadNBDTLS: the [nbd] table's TLS files with a client CA and a
// cert: rule; a client with a certificate the rule names is served
// read-write. After the files are replaced by ones of another CA and
// SIGHUP's work (reloadExport), new connections use them: a client of the
// new CA is served, one whose certificate the old CA signed fails the
// handshake. A changed nbd.listen needs a restart and is kept.
func TestReloadNBDTLS(t *testing.T) {
	dir := t.TempDir()
	pki1, pki2 := testpki.New(t, "CA 1"), testpki.New(t, "CA 2")
	writeTLSFiles(t, pki1, dir)
	conf := func(listen string) string {
		return "[access]\nallow = [\"cert:backup-host=rw\"]\n[nbd]\nlisten = [\"" + listen + "\"]\n" +
			"tls_cert = \"" + dir + "/cert.pem\"\ntls_key = \"" + dir + "/key.pem\"\ntls_ca = \"" + dir + "/ca.pem\"\n" +
			"[[export]]\nname = \"disk\"\npath = \"" + exporttest.File(t, 1<<20) + "\"\n"
	}
	p := writeConfig(t, dir, conf("nbd://127.0.0.1:0"))
	var ctxOf *cli.Context
	app := newApp()
	for _, c := range app.Commands {
		if c.Name == "export" {
			c.Action = func(c *cli.Context) error { ctxOf = c; return nil }
		}
	}
	if err := app.Run([]string{"dst", "export", "--config", p}); err != nil {
		t.Fatal(err)
	}
	cfg, listens, nset, err := exportConfigNBD(ctxOf)
	if err != nil {
		t.Fatal(err)
	}
	tcfg, err := nset.tlsConfig()
	if err != nil || tcfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Fatalf("TLS config %v, %v", tcfg, err)
	}
	holder := new(atomic.Pointer[tls.Config])
	holder.Store(tcfg)
	cfg.Log = exporttest.TestLogger(t)
	srv, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.ListenURL(context.Background(), nset.listens[0], transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeNBDWith(context.Background(), l, export.NBDOptions{GetTLS: holder.Load}) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	r := &exportReloader{srv: srv, cfg: cfg, listens: listens, nbd: nset, nbdTLS: holder}
	connect := func(roots *testpki.CA, cert tls.Certificate) (nbd.ExportInfo, error) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, info, _, err := nbd.ClientConnect(c, nbd.ClientOptions{Export: "disk", TLS: &tls.Config{
			RootCAs: roots.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		}})
		return info, err
	}
	cert1, _, _ := pki1.Issue(false, "backup-host")
	if info, err := connect(pki1, cert1); err != nil || info.Flags&nbd.FlagReadOnly != 0 {
		t.Fatalf("client certificate backup-host: %+v, %v", info, err)
	}

	writeTLSFiles(t, pki2, dir)
	writeConfig(t, dir, conf("nbd://127.0.0.1:1"))
	reloadExport(ctxOf, r)
	cert2, _, _ := pki2.Issue(false, "backup-host")
	if info, err := connect(pki2, cert2); err != nil || info.Flags&nbd.FlagReadOnly != 0 {
		t.Fatalf("after the reload, a client of the new CA: %+v, %v", info, err)
	}
	if _, err := connect(pki2, cert1); err == nil {
		t.Fatal("after the reload, a client certificate of the old CA was accepted")
	}
	if got := r.nbd.listenStrings(); !slices.Equal(got, nset.listenStrings()) {
		t.Fatalf("nbd.listen %v after the reload: it needs a restart", got)
	}
}
