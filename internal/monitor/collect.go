// Package monitor exposes DST's counters to Prometheus: collectors that
// read the counters of a ublk device, its transaction engine, an exporter
// and a crypto pool at scrape time (the data paths only update atomics,
// internal/metrics), an HTTP server for them on TCP and Unix sockets, and
// the client side of `dst stats`.
//
// Labels are bounded: a device daemon serves one device (device, kind,
// url); an exporter labels by export name (its configuration bounds
// them) and by op. Sessions and peers are not labels: an exporter may
// hold 4096 sessions whose tokens change with every new client, and
// per-peer series would grow without bound; they are counted per export
// instead (dst_export_sessions, dst_export_connections).
package monitor

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/txn"
)

// bucketsSeconds are metrics.Buckets in seconds.
var bucketsSeconds = func() []float64 {
	b := make([]float64, metrics.NumBuckets)
	for i, ns := range metrics.Buckets {
		b[i] = float64(ns) / 1e9
	}
	return b
}()

// ioDescs describe per-op request counters under a prefix.
type ioDescs struct {
	requests, bytes, errors, duration, inflight *prometheus.Desc
}

func newIODescs(prefix, what string, labels []string) ioDescs {
	op := append(append([]string{}, labels...), "op")
	return ioDescs{
		requests: prometheus.NewDesc(prefix+"_requests_total", what+": completed requests by op, failed ones included", op, nil),
		bytes:    prometheus.NewDesc(prefix+"_bytes_total", what+": bytes of the successful requests by op", op, nil),
		errors:   prometheus.NewDesc(prefix+"_errors_total", what+": requests that failed, by op", op, nil),
		duration: prometheus.NewDesc(prefix+"_request_duration_seconds", what+": request latency by op", op, nil),
		inflight: prometheus.NewDesc(prefix+"_inflight_requests", what+": requests started and not yet completed", labels, nil),
	}
}

func (d *ioDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- d.requests
	ch <- d.bytes
	ch <- d.errors
	ch <- d.duration
	ch <- d.inflight
}

func (d *ioDescs) collect(ch chan<- prometheus.Metric, s *metrics.IOSnapshot, labels []string) {
	ch <- prometheus.MustNewConstMetric(d.inflight, prometheus.GaugeValue, float64(s.Inflight()), labels...)
	lv := append(append(make([]string, 0, len(labels)+1), labels...), "")
	for i := range s.Op {
		o := &s.Op[i]
		lv[len(lv)-1] = metrics.Ops[i]
		ch <- prometheus.MustNewConstMetric(d.requests, prometheus.CounterValue, float64(o.Count), lv...)
		ch <- prometheus.MustNewConstMetric(d.bytes, prometheus.CounterValue, float64(o.Bytes), lv...)
		ch <- prometheus.MustNewConstMetric(d.errors, prometheus.CounterValue, float64(o.Errors), lv...)
		ch <- histogram(d.duration, &o.Latency, lv)
	}
}

// histogram turns a snapshot into a Prometheus histogram (cumulative
// buckets, seconds).
func histogram(d *prometheus.Desc, h *metrics.HistogramSnapshot, lv []string) prometheus.Metric {
	b := make(map[float64]uint64, metrics.NumBuckets)
	var cum uint64
	for i, le := range bucketsSeconds {
		cum += h.Counts[i]
		b[le] = cum
	}
	cum += h.Counts[metrics.NumBuckets]
	return prometheus.MustNewConstHistogram(d, cum, float64(h.SumNs)/1e9, b, lv...)
}

// TxnSource is a transaction engine's counters: *txn.Target (every
// queue's connection) or *txn.Client.
type TxnSource interface {
	Stats() txn.Stats
	State() txn.ConnState
}

// Device describes the device a daemon serves.
type Device struct {
	ID   uint32
	Kind string // null, file, remote
	URL  string // the export URL of a remote device, the path of a file
	// IO returns the device's request counters (ublk.Device.IO); nil for
	// a bare transaction client.
	IO func() metrics.IOSnapshot
	// Txn, for a remote device, is its transaction engine.
	Txn TxnSource
	// Pool, if set, is the crypto worker pool.
	Pool *crypto.Pool
}

// DeviceCollector collects one device's metrics.
type DeviceCollector struct {
	dev    Device
	labels []string
	io     ioDescs
	txn    []*prometheus.Desc
	conn   *prometheus.Desc
	pool   poolDescs
}

var deviceLabels = []string{"device", "kind", "url"}

// txn counters, in the order of txnValues.
var txnNames = [...][2]string{
	{"dst_txn_submitted_total", "transactions submitted to the engine"},
	{"dst_txn_completed_total", "transactions completed, failed ones included"},
	{"dst_txn_failed_total", "transactions completed with an error"},
	{"dst_txn_resent_total", "frames resent (after a timeout or on a new connection)"},
	{"dst_txn_timeouts_total", "transactions whose attempt timed out"},
	{"dst_txn_reconnects_total", "connections re-established after a loss"},
	{"dst_txn_pings_total", "pings sent on idle connections"},
	{"dst_txn_corrupt_replies_total", "reply frames whose checksum or authentication failed (dropped, resent)"},
	{"dst_txn_inflight", "transactions submitted and not yet completed"},
}

func txnValues(s txn.Stats) [len(txnNames)]float64 {
	inflight := uint64(0)
	if s.Submitted > s.Completed {
		inflight = s.Submitted - s.Completed
	}
	return [...]float64{float64(s.Submitted), float64(s.Completed), float64(s.Failed), float64(s.Resent),
		float64(s.Timeouts), float64(s.Reconnects), float64(s.PingsSent), float64(s.Corrupt), float64(inflight)}
}

// NewDeviceCollector returns a collector for d.
func NewDeviceCollector(d Device) *DeviceCollector {
	c := &DeviceCollector{dev: d, labels: []string{fmt.Sprintf("ublkb%d", d.ID), d.Kind, d.URL}}
	c.io = newIODescs("dst_device", "ublk device", deviceLabels)
	for _, n := range txnNames {
		c.txn = append(c.txn, prometheus.NewDesc(n[0], "remote device: "+n[1], deviceLabels, nil))
	}
	c.conn = prometheus.NewDesc("dst_txn_connected", "remote device: 1 when every queue's connection is up", deviceLabels, nil)
	c.pool = newPoolDescs("dst_txn", deviceLabels)
	return c
}

// Describe implements prometheus.Collector.
func (c *DeviceCollector) Describe(ch chan<- *prometheus.Desc) {
	c.io.describe(ch)
	for _, d := range c.txn {
		ch <- d
	}
	ch <- c.conn
	c.pool.describe(ch)
}

// Collect implements prometheus.Collector.
func (c *DeviceCollector) Collect(ch chan<- prometheus.Metric) {
	if c.dev.IO != nil {
		s := c.dev.IO()
		c.io.collect(ch, &s, c.labels)
	}
	if t := c.dev.Txn; t != nil {
		for i, v := range txnValues(t.Stats()) {
			kind := prometheus.CounterValue
			if i == len(txnNames)-1 {
				kind = prometheus.GaugeValue
			}
			ch <- prometheus.MustNewConstMetric(c.txn[i], kind, v, c.labels...)
		}
		up := 0.0
		if t.State() == txn.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.conn, prometheus.GaugeValue, up, c.labels...)
	}
	if p := c.dev.Pool; p != nil {
		s := p.Stats()
		c.pool.collect(ch, &s, c.labels)
	}
}

type poolDescs struct{ workers, queued, grown, shrunk *prometheus.Desc }

func newPoolDescs(prefix string, labels []string) poolDescs {
	return poolDescs{
		workers: prometheus.NewDesc(prefix+"_crypto_pool_workers", "crypto pool: workers running", labels, nil),
		queued:  prometheus.NewDesc(prefix+"_crypto_pool_queued_jobs", "crypto pool: jobs waiting for a worker", labels, nil),
		grown:   prometheus.NewDesc(prefix+"_crypto_pool_grown_total", "crypto pool: workers started above the minimum", labels, nil),
		shrunk:  prometheus.NewDesc(prefix+"_crypto_pool_shrunk_total", "crypto pool: workers that exited idle", labels, nil),
	}
}

func (d *poolDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- d.workers
	ch <- d.queued
	ch <- d.grown
	ch <- d.shrunk
}

func (d *poolDescs) collect(ch chan<- prometheus.Metric, s *crypto.PoolStats, lv []string) {
	ch <- prometheus.MustNewConstMetric(d.workers, prometheus.GaugeValue, float64(s.Workers), lv...)
	ch <- prometheus.MustNewConstMetric(d.queued, prometheus.GaugeValue, float64(s.Queued), lv...)
	ch <- prometheus.MustNewConstMetric(d.grown, prometheus.CounterValue, float64(s.Grown), lv...)
	ch <- prometheus.MustNewConstMetric(d.shrunk, prometheus.CounterValue, float64(s.Shrunk), lv...)
}

// ExporterCollector collects an exporter's metrics.
type ExporterCollector struct {
	src                   func() export.ServerMetrics
	io, nbd               ioDescs
	nbdConns, allNBD      *prometheus.Desc
	dups, sessions, conns *prometheus.Desc
	info                  *prometheus.Desc
	allConns              *prometheus.Desc
	corrupt, auth, refuse *prometheus.Desc
	pool                  poolDescs
}

// NewExporterCollector returns a collector for s.
func NewExporterCollector(s *export.Server) *ExporterCollector {
	return newExporterCollector(s.Metrics)
}

func newExporterCollector(src func() export.ServerMetrics) *ExporterCollector {
	l := []string{"export"}
	return &ExporterCollector{
		src:      src,
		io:       newIODescs("dst_export", "export", l),
		nbd:      newIODescs("dst_export_nbd", "export, NBD clients", l),
		nbdConns: prometheus.NewDesc("dst_export_nbd_connections", "export: NBD connections in transmission on it", l, nil),
		allNBD:   prometheus.NewDesc("dst_exporter_nbd_connections", "exporter: NBD connections open, negotiating ones included", nil, nil),
		dups:     prometheus.NewDesc("dst_export_duplicates_total", "export: resent requests answered without executing them again", l, nil),
		sessions: prometheus.NewDesc("dst_export_sessions", "export: sessions held (attached or lingering)", l, nil),
		conns:    prometheus.NewDesc("dst_export_connections", "export: DST connections attached to its sessions", l, nil),
		info:     prometheus.NewDesc("dst_export_info", "export: served now (1), with its path and access", []string{"export", "path", "ro"}, nil),
		allConns: prometheus.NewDesc("dst_exporter_connections", "exporter: DST connections open, handshaking ones included", nil, nil),
		corrupt:  prometheus.NewDesc("dst_exporter_corrupt_frames_total", "exporter: request frames dropped on a checksum mismatch", nil, nil),
		auth:     prometheus.NewDesc("dst_exporter_auth_failures_total", "exporter: request frames that failed authentication", nil, nil),
		refuse:   prometheus.NewDesc("dst_exporter_crypto_refused_total", "exporter: handshakes refused or failed for crypto reasons", nil, nil),
		pool:     newPoolDescs("dst_exporter", nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ExporterCollector) Describe(ch chan<- *prometheus.Desc) {
	c.io.describe(ch)
	c.nbd.describe(ch)
	for _, d := range []*prometheus.Desc{c.dups, c.sessions, c.conns, c.info, c.allConns, c.corrupt, c.auth, c.refuse, c.nbdConns, c.allNBD} {
		ch <- d
	}
	c.pool.describe(ch)
}

// Collect implements prometheus.Collector.
func (c *ExporterCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.src()
	for i := range m.Exports {
		e := &m.Exports[i]
		lv := []string{e.Name}
		c.io.collect(ch, &e.IO, lv)
		c.nbd.collect(ch, &e.NBD, lv)
		ch <- prometheus.MustNewConstMetric(c.nbdConns, prometheus.GaugeValue, float64(e.NBDConns), lv...)
		ch <- prometheus.MustNewConstMetric(c.dups, prometheus.CounterValue, float64(e.Duplicates), lv...)
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(e.Sessions), lv...)
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(e.Conns), lv...)
		ro := "false"
		if e.ReadOnly {
			ro = "true"
		}
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, e.Name, e.Path, ro)
	}
	ch <- prometheus.MustNewConstMetric(c.allConns, prometheus.GaugeValue, float64(m.Conns))
	ch <- prometheus.MustNewConstMetric(c.allNBD, prometheus.GaugeValue, float64(m.NBDConns))
	ch <- prometheus.MustNewConstMetric(c.corrupt, prometheus.CounterValue, float64(m.Crypto.Corrupt))
	ch <- prometheus.MustNewConstMetric(c.auth, prometheus.CounterValue, float64(m.Crypto.Auth))
	ch <- prometheus.MustNewConstMetric(c.refuse, prometheus.CounterValue, float64(m.Crypto.Refused))
	if m.Pool != nil {
		c.pool.collect(ch, m.Pool, nil)
	}
}
