package export_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/wire"
)

// dialFrom connects to addr (a dst://127.0.0.1:PORT URL) from the local
// address ip (any of 127.0.0.0/8 is on the loopback) and handshakes for
// export; it returns the client and the handshake's error.
func dialFrom(t *testing.T, addr, ip, exportName string, token *wire.Token) (*exporttest.Client, error) {
	t.Helper()
	host := strings.TrimPrefix(addr, "dst://")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", host, ip, err)
	}
	c := exporttest.NewClient(t, nc)
	h := &wire.Hello{Export: exportName, Features: exporttest.AllFeatures}
	if token != nil {
		h.Session, h.HasSession = *token, true
	}
	_, err = c.Hello(h)
	return c, err
}

func acl(rules ...string) export.ACL {
	var a export.ACL
	for _, r := range rules {
		a.Rules = append(a.Rules, mustRule(r))
	}
	return a
}

// TestReloadAccess: a new access list closes the connections whose access
// it reduces (denied; ro for a session that may write) and leaves the
// others alone; the clients' reconnects meet the new list.
func TestReloadAccess(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Access = acl("127.0.0.1=rw", "127.0.0.2=rw", "127.0.0.3=ro")
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	a, b := pattern(bs, 40), pattern(bs, 41)

	ca, err := dialFrom(t, addr, "127.0.0.1", "disk", nil)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := dialFrom(t, addr, "127.0.0.2", "disk", nil)
	if err != nil {
		t.Fatal(err)
	}
	cr, err := dialFrom(t, addr, "127.0.0.3", "disk", nil) // a read-only session
	if err != nil {
		t.Fatal(err)
	}
	ca.MustDo(write(1, 0, a), a, wire.StatusOK)
	cb.MustDo(write(1, blockX, b), b, wire.StatusOK)
	cr.MustDo(read(1, 0, bs), nil, wire.StatusOK)

	// An invalid list changes nothing.
	if err := srv.SetAccess(export.ACL{}); !errors.Is(err, export.ErrNoACL) {
		t.Fatalf("SetAccess of an empty list: %v, want ErrNoACL", err)
	}

	// 127.0.0.2 is dropped, 127.0.0.3 becomes rw: only b's connection
	// closes.
	if err := srv.SetAccess(acl("127.0.0.1=rw", "127.0.0.3=rw")); err != nil {
		t.Fatal(err)
	}
	cb.ExpectClosed(5 * time.Second)
	ca.MustDo(write(2, 0, b), b, wire.StatusOK)
	cr.MustDo(read(2, 0, bs), nil, wire.StatusOK)
	tok := cb.Welcome.Session
	if _, err := dialFrom(t, addr, "127.0.0.2", "disk", &tok); err == nil {
		t.Fatal("a peer the new list denies completed a handshake")
	}

	// 127.0.0.1 becomes ro: its writable session is closed; the resume
	// is read-only. The ro session of 127.0.0.3 is not affected by
	// becoming ro.
	if err := srv.SetAccess(acl("127.0.0.1=ro", "127.0.0.3=ro")); err != nil {
		t.Fatal(err)
	}
	ca.ExpectClosed(5 * time.Second)
	cr.MustDo(read(3, 0, bs), nil, wire.StatusOK)
	tok = ca.Welcome.Session
	ca2, err := dialFrom(t, addr, "127.0.0.1", "disk", &tok)
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Welcome.Resumed || !ca2.Welcome.ReadOnly {
		t.Fatalf("resume after the downgrade: resumed %v read-only %v, want both", ca2.Welcome.Resumed, ca2.Welcome.ReadOnly)
	}
	ca2.MustDo(write(3, 0, a), a, wire.StatusEPERM)
	ca2.MustDo(write(2, 0, b), b, wire.StatusOK) // answered from the record
	if got := ca2.MustDo(read(4, 0, bs), nil, wire.StatusOK); !bytes.Equal(got, b) {
		t.Fatal("block 0 does not hold the last acknowledged write")
	}
}

// TestReloadExports: exports are added and removed while the server runs;
// the sessions of the other exports go on untouched.
func TestReloadExports(t *testing.T) {
	path, path2, path3 := exporttest.File(t, testSize), exporttest.File(t, testSize), exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "disk2", Path: path2})
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	a, b := pattern(bs, 42), pattern(bs, 43)

	c1 := exporttest.Connect(t, addr, "disk")
	c2 := exporttest.Connect(t, addr, "disk2")
	c1.MustDo(write(1, 0, a), a, wire.StatusOK)
	c2.MustDo(write(1, 0, b), b, wire.StatusOK)

	// Removing disk2 waits for its in-flight write, which completes.
	srv.Hold(true)
	if err := c2.Send(write(2, blockX, a), a); err != nil {
		t.Fatal(err)
	}
	noReplies(t, c2, 1<<63) // write 2 is executing (held)
	removed := make(chan error, 1)
	go func() { removed <- srv.RemoveExport(context.Background(), "disk2") }()
	c2.ExpectClosed(5 * time.Second)
	select {
	case err := <-removed:
		t.Fatalf("RemoveExport returned with a write in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	if err := srv.RemoveExport(ctx, "disk2"); err == nil {
		t.Fatal("removing a removed export succeeded")
	}
	cancel()
	srv.Hold(false)
	if err := <-removed; err != nil {
		t.Fatalf("RemoveExport: %v", err)
	}
	if !bytes.Equal(fileAt(t, path2, blockX, bs), a) {
		t.Fatal("the write in flight on the removed export was not completed")
	}

	// disk's session is untouched; disk2 is unknown now, and so is its
	// session.
	c1.MustDo(write(2, blockX, b), b, wire.StatusOK)
	noReplies(t, c1, 1<<63)
	refused := exporttest.Dial(t, addr)
	var re *wire.RefuseError
	if _, err := refused.Hello(&wire.Hello{Export: "disk2", Features: exporttest.AllFeatures,
		Session: c2.Welcome.Session, HasSession: true}); !errors.As(err, &re) || re.Code != wire.RefuseNoSuchExport {
		t.Fatalf("handshake for a removed export: %v, want NO_SUCH_EXPORT", err)
	}

	// Add: a new export, and disk2 again under the same name (a new
	// file: a changed export is a removal and an addition).
	if err := srv.AddExport(export.ExportConfig{Name: "disk3", Path: path3, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddExport(export.ExportConfig{Name: "disk", Path: path3}); err == nil {
		t.Fatal("an export name served already was added again")
	}
	if err := srv.AddExport(export.ExportConfig{Name: "bad/name", Path: path3}); err == nil {
		t.Fatal("a bad export name was accepted")
	}
	if err := srv.AddExport(export.ExportConfig{Name: "nofile", Path: path3 + ".missing"}); err == nil {
		t.Fatal("an export whose file does not exist was added")
	}
	c3 := exporttest.Connect(t, addr, "disk3")
	if !c3.Welcome.ReadOnly {
		t.Fatal("disk3 was added read-only")
	}
	c3.MustDo(read(1, 0, bs), nil, wire.StatusOK)
	c3.MustDo(write(2, 0, a), a, wire.StatusEROFS)
	if err := srv.AddExport(export.ExportConfig{Name: "disk2", Path: path3}); err != nil {
		t.Fatal(err)
	}
	c4 := exporttest.Connect(t, addr, "disk2")
	c4.MustDo(write(1, 0, b), b, wire.StatusOK)
	if !bytes.Equal(fileAt(t, path3, 0, bs), b) {
		t.Fatal("the re-added disk2 does not serve its new file")
	}
	var names []string
	for _, e := range srv.Exports() {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, ","); got != "disk,disk3,disk2" {
		t.Fatalf("exports %s, want disk,disk3,disk2", got)
	}
	c1.MustDo(read(3, blockX, bs), nil, wire.StatusOK)
}

// TestRemoveIdleExport: removing an export nobody uses closes it at once;
// removing an unknown one is an error.
func TestRemoveIdleExport(t *testing.T) {
	path, path2 := exporttest.File(t, testSize), exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "disk2", Path: path2})
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	c := exporttest.Connect(t, addr, "disk2")
	c.Close()
	waitFor(t, 5*time.Second, "the connection to end", func() bool { return srv.NumConns() == 0 })
	if err := srv.RemoveExport(context.Background(), "disk2"); err != nil {
		t.Fatal(err)
	}
	if n := srv.NumSessions(); n != 0 {
		t.Fatalf("%d sessions after removing the only export in use", n)
	}
	if err := srv.RemoveExport(context.Background(), "nope"); err == nil {
		t.Fatal("removing an unknown export succeeded")
	}
}

// openFD reports whether this process has path open.
func openFD(t *testing.T, path string) bool {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && l == path {
			return true
		}
	}
	return false
}

// TestRemoveExportNBD: an NBD client keeps a removed export's file open
// (RemoveExport does not close NBD connections, and never closes the file
// under one): its requests go on, new NBD handshakes for the export fail,
// and the file is closed once the client has gone.
func TestRemoveExportNBD(t *testing.T) {
	path, path2 := exporttest.File(t, testSize), exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "disk2", Path: path2})
	srv, addr := startNBD(t, cfg)
	c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk2", Structured: true, BlockSize: true})
	a := pattern(bs, 44)
	if r := c.do(req(nbd.CmdWrite, 1, 0, bs), a); r.errno != 0 {
		t.Fatalf("write: %v", r.errno)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.RemoveExport(ctx, "disk2"); err == nil {
		t.Fatal("RemoveExport returned nil while an NBD client uses the export")
	}
	if r := c.do(req(nbd.CmdRead, 2, 0, bs), nil); r.errno != 0 || !bytes.Equal(r.data, a) {
		t.Fatalf("read on the NBD connection of the removed export: %v", r.errno)
	}
	if !openFD(t, path2) {
		t.Fatal("the removed export's file was closed under its NBD client")
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := nbd.ClientGo(nc, nbd.ClientOptions{Export: "disk2", Structured: true}); err == nil {
		t.Fatal("an NBD handshake for a removed export succeeded")
	}
	c.send(nbd.Request{Type: nbd.CmdDisc, Cookie: 3}, nil)
	c.expectClosed()
	waitFor(t, 5*time.Second, "the removed export's file to be closed", func() bool { return !openFD(t, path2) })
	if !openFD(t, path) {
		t.Fatal("the other export's file was closed")
	}
}
