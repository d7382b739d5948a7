package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/transport"
)

// TestScrapeNBD: real NBD I/O (a raw client over loopback TCP: pipelined
// writes, a read, a flush, a read past the end and a write past the end)
// shows in the dst_export_nbd_* counters, and the NBD connection in the
// connection gauges while it is open and not after it closed.
func TestScrapeNBD(t *testing.T) {
	const bs, size = 4096, 1 << 20
	srv, err := export.New(export.Config{
		Exports: []export.ExportConfig{{Name: "disk", Path: exporttest.File(t, size)}},
		Access:  export.ACL{AllowAll: export.ReadWrite},
		Log:     exporttest.TestLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := export.ParseNBDListenURL("nbd://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nl, err := transport.ListenURL(context.Background(), u, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeNBD(context.Background(), nl) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-served
	}()
	reg, err := NewRegistry(NewExporterCollector(srv))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ms := NewServer(reg)
	ms.Serve(l, func(err error) { t.Error(err) })
	defer ms.Close()
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		fams, err := Fetch(context.Background(), "http://"+l.Addr().String()+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		return fams
	}
	if v := value(t, scrape(), "dst_export_nbd_requests_total", "export", "disk", "op", "write"); v != 0 {
		t.Fatalf("NBD writes before any I/O: %v", v)
	}

	c, err := net.Dial("tcp", nl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, _, err := nbd.ClientGo(c, nbd.ClientOptions{Export: "disk", BlockSize: true}); err != nil {
		t.Fatal(err)
	}
	// Simple replies: a header, and the data of a successful READ.
	replies := func(n int, read map[uint64]bool) map[uint64]nbd.Errno {
		t.Helper()
		got := map[uint64]nbd.Errno{}
		for range n {
			var h [nbd.SimpleReplyLen]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				t.Fatal(err)
			}
			r, _, err := nbd.ParseReply(h[:])
			if err != nil {
				t.Fatal(err)
			}
			if read[r.Cookie] && r.Errno == 0 {
				if _, err := io.CopyN(io.Discard, c, bs); err != nil {
					t.Fatal(err)
				}
			}
			got[r.Cookie] = r.Errno
		}
		return got
	}
	const writes = 32
	var b []byte
	payload := make([]byte, bs)
	for i := range writes { // pipelined: served concurrently
		b = nbd.AppendRequest(b, nbd.Request{Type: nbd.CmdWrite, Cookie: uint64(i), Offset: uint64(i * bs), Length: bs})
		b = append(b, payload...)
	}
	b = nbd.AppendRequest(b, nbd.Request{Type: nbd.CmdWrite, Cookie: 100, Offset: size, Length: bs}) // ENOSPC
	b = append(b, payload...)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	for cookie, e := range replies(writes+1, nil) {
		if (e != 0) != (cookie == 100) {
			t.Fatalf("write %d: errno %v", cookie, e)
		}
	}
	b = nbd.AppendRequest(b[:0], nbd.Request{Type: nbd.CmdRead, Cookie: 200, Offset: 0, Length: bs})
	b = nbd.AppendRequest(b, nbd.Request{Type: nbd.CmdRead, Cookie: 201, Offset: size, Length: bs}) // EINVAL
	b = nbd.AppendRequest(b, nbd.Request{Type: nbd.CmdFlush, Cookie: 202})
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if got := replies(3, map[uint64]bool{200: true, 201: true}); got[200] != 0 || got[201] != nbd.EINVAL || got[202] != 0 {
		t.Fatalf("read, read past the end, flush: %v", got)
	}

	// A request is counted when its reply has left and its buffer is
	// released, which can be just after the client has read the reply:
	// scrape until the counts settle (or report the last scrape).
	type want struct {
		name string
		want float64
		l    []string
	}
	wants := []want{
		{"dst_export_nbd_requests_total", writes + 1, []string{"export", "disk", "op", "write"}},
		{"dst_export_nbd_bytes_total", writes * bs, []string{"export", "disk", "op", "write"}},
		{"dst_export_nbd_errors_total", 1, []string{"export", "disk", "op", "write"}},
		{"dst_export_nbd_request_duration_seconds", writes + 1, []string{"export", "disk", "op", "write"}},
		{"dst_export_nbd_requests_total", 2, []string{"export", "disk", "op", "read"}},
		{"dst_export_nbd_bytes_total", bs, []string{"export", "disk", "op", "read"}},
		{"dst_export_nbd_errors_total", 1, []string{"export", "disk", "op", "read"}},
		{"dst_export_nbd_requests_total", 1, []string{"export", "disk", "op", "flush"}},
		{"dst_export_nbd_inflight_requests", 0, []string{"export", "disk"}},
		{"dst_export_nbd_connections", 1, []string{"export", "disk"}},
		{"dst_exporter_nbd_connections", 1, nil},
		{"dst_export_requests_total", 0, []string{"export", "disk", "op", "write"}}, // DST only
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fams := scrape()
		var bad []string
		for _, w := range wants {
			if got := value(t, fams, w.name, w.l...); got != w.want {
				bad = append(bad, fmt.Sprintf("%s%v = %v, want %v", w.name, w.l, got, w.want))
			}
		}
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: %s", strings.Join(bad, "; "))
		}
	}

	if _, err := c.Write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdDisc, Cookie: 300})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("after DISC: %v, want EOF", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams := scrape()
		if value(t, fams, "dst_exporter_nbd_connections") == 0 && value(t, fams, "dst_export_nbd_connections", "export", "disk") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the NBD connection is still counted 10 s after DISC")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
