package monitor

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport/fault"
	"github.com/dst-dev/dst/txn"
)

// value returns the value of the series of family name whose labels
// include want (name=value pairs), failing if there is none.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	fam := fams[name]
	if fam == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no series %s%v", name, want)
	return 0
}

// blockClient runs one request at a time on a txn.Client.
type blockClient struct {
	c    *txn.Client
	mu   sync.Mutex
	done chan syscall.Errno
}

func newBlockClient(c *txn.Client) *blockClient {
	b := &blockClient{c: c, done: make(chan syscall.Errno, 1)}
	c.SetDeliver(func(cs []txn.Completion) {
		for _, cp := range cs {
			b.done <- cp.Err
		}
	})
	return b
}

func (b *blockClient) do(op wire.Op, off uint64, buf []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.c.Submit(1, op, 0, off, uint32(len(buf)), buf)
	select {
	case e := <-b.done:
		if e != 0 {
			return e
		}
		return nil
	case <-time.After(20 * time.Second):
		return fmt.Errorf("%v at %d: no completion", op, off)
	}
}

// TestScrapeExporterAndClient runs an exporter and a transaction client
// through a proxy that cuts connections, serves both sides' collectors
// over HTTP on a real listener, and checks that what a scrape shows
// follows the I/O: after N writes the exporter executed N writes of
// N*4096 bytes with N latencies, the client completed them, and a cut
// shows as a reconnect while every write is still executed once.
func TestScrapeExporterAndClient(t *testing.T) {
	const bs = 4096
	path := exporttest.File(t, 1<<20)
	srv, addr := exporttest.Start(t, export.Config{
		Exports: []export.ExportConfig{{Name: "disk", Path: path}},
		Access:  export.ACL{AllowAll: export.ReadWrite},
	}, exporttest.TCP4)
	// Each proxied connection is cut after 150 kB in either direction:
	// the first phase stays below, the second crosses it.
	p := &fault.Proxy{Listen: "dst://127.0.0.1:0", Target: addr, Rand: rand.New(rand.NewPCG(1, 2)),
		Fault: fault.Config{Write: fault.Rules{Cut: true, CutAfter: 150_000}, Read: fault.Rules{Cut: true, CutAfter: 150_000}}}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	url := p.URL().String() + "/disk"
	c, err := txn.Dial(context.Background(), txn.Options{URL: url, Tick: 10 * time.Millisecond, Timeout: 300 * time.Millisecond,
		Retries: 20, Ping: 100 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	}()

	reg, err := NewRegistry(NewExporterCollector(srv), NewDeviceCollector(Device{ID: 7, Kind: "remote", URL: url, Txn: c}))
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
	scrapeURL := "http://" + l.Addr().String() + "/metrics"
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		fams, err := Fetch(context.Background(), scrapeURL)
		if err != nil {
			t.Fatal(err)
		}
		return fams
	}

	fams := scrape()
	if v := value(t, fams, "dst_export_requests_total", "export", "disk", "op", "write"); v != 0 {
		t.Fatalf("writes before any I/O: %v", v)
	}
	b := newBlockClient(c)
	buf := make([]byte, bs)
	const n1 = 20
	for i := range n1 {
		buf[0] = byte(i)
		if err := b.do(wire.OpWrite, uint64(i*bs), buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.do(wire.OpRead, 0, buf); err != nil {
		t.Fatal(err)
	}
	fams = scrape()
	for _, c := range []struct {
		name string
		want float64
		l    []string
	}{
		{"dst_export_requests_total", n1, []string{"export", "disk", "op", "write"}},
		{"dst_export_bytes_total", n1 * bs, []string{"export", "disk", "op", "write"}},
		{"dst_export_request_duration_seconds", n1, []string{"export", "disk", "op", "write"}},
		{"dst_export_errors_total", 0, []string{"export", "disk", "op", "write"}},
		{"dst_export_requests_total", 1, []string{"export", "disk", "op", "read"}},
		{"dst_export_bytes_total", bs, []string{"export", "disk", "op", "read"}},
		{"dst_export_inflight_requests", 0, []string{"export", "disk"}},
		{"dst_export_sessions", 1, []string{"export", "disk"}},
		{"dst_export_connections", 1, []string{"export", "disk"}},
		{"dst_export_info", 1, []string{"export", "disk", "path", path, "ro", "false"}},
		{"dst_txn_completed_total", n1 + 1, []string{"device", "ublkb7", "kind", "remote", "url", url}},
		{"dst_txn_reconnects_total", 0, nil},
		{"dst_txn_inflight", 0, nil},
		{"dst_txn_connected", 1, nil},
	} {
		if got := value(t, fams, c.name, c.l...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.l, got, c.want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Cross the cut: the client reconnects (resuming its session) and
	// resends; the exporter still executes every write exactly once.
	const n2 = 60
	for i := range n2 {
		if err := b.do(wire.OpWrite, uint64((n1+i)%256*bs), buf); err != nil {
			t.Fatal(err)
		}
	}
	fams = scrape()
	if v := value(t, fams, "dst_txn_reconnects_total"); v < 1 {
		t.Fatalf("reconnects %v after crossing the proxy's cut", v)
	}
	if v := value(t, fams, "dst_txn_completed_total"); v != n1+1+n2 {
		t.Errorf("client completed %v, want %v", v, n1+1+n2)
	}
	if v := value(t, fams, "dst_export_requests_total", "op", "write"); v != n1+n2 {
		t.Errorf("exporter executed %v writes, want %v (exactly once)", v, n1+n2)
	}
	if v := value(t, fams, "dst_export_bytes_total", "op", "write"); v != (n1+n2)*bs {
		t.Errorf("exporter wrote %v bytes, want %v", v, (n1+n2)*bs)
	}
	t.Logf("reconnects %v resent %v duplicates %v", value(t, fams, "dst_txn_reconnects_total"),
		value(t, fams, "dst_txn_resent_total"), value(t, fams, "dst_export_duplicates_total"))
}

// TestDeviceCollectorAndDelta serves a device collector whose counters
// the test sets, on a Unix socket, and checks the exposition and the rates
// dst stats computes from two scrapes.
func TestDeviceCollectorAndDelta(t *testing.T) {
	var io metrics.IO
	reg, err := NewRegistry(NewDeviceCollector(Device{ID: 3, Kind: "null", IO: io.Snapshot}))
	if err != nil {
		t.Fatal(err)
	}
	sock := t.TempDir() + "/ublk3.metrics"
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ms := NewServer(reg)
	ms.Serve(l, nil)
	sample := func(at time.Time) Sample {
		fams, err := Fetch(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		s, err := DeviceSample(fams, at)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t0 := time.Now()
	s0 := sample(t0)
	for range 100 {
		io.Start()
		io.Done(metrics.Read, 4096, 100_000, false) // 100 µs
	}
	for range 50 {
		io.Start()
		io.Done(metrics.Write, 65536, 1_000_000, false) // 1 ms
	}
	io.Start() // one in flight
	s1 := sample(t0.Add(2 * time.Second))
	r := Delta(s0, s1)
	if r.ReadIOPS != 50 || r.WriteIOPS != 25 || r.ReadMBps != 100*4096/2e6 || r.WriteMBps != 50*65536/2e6 || r.Inflight != 1 {
		t.Fatalf("rates %+v", r)
	}
	// mean of 100×100µs and 50×1ms; p99 falls in the bucket of 1 ms.
	if want := (100*100*time.Microsecond + 50*time.Millisecond) / 150; r.AvgLatency < want-time.Microsecond || r.AvgLatency > want+time.Microsecond {
		t.Errorf("avg latency %v, want %v", r.AvgLatency, want)
	}
	if r.P99Latency != 1024*time.Microsecond {
		t.Errorf("p99 %v, want the 1.024ms bucket", r.P99Latency)
	}
	line := r.String()
	if !strings.Contains(line, "read      50 IOPS") || strings.Contains(line, "reconnects") {
		t.Errorf("line %q", line)
	}
	// Close stops serving: the socket no longer answers.
	if err := ms.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Fetch(context.Background(), sock); err == nil {
		t.Fatal("metrics still served after Close")
	}
}
