package monitor

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dst-dev/dst/internal/metrics"
)

// Fetch reads the metrics of a daemon: target is the path of a Unix
// socket (/run/dst/ublkN.metrics) or an http:// URL.
func Fetch(ctx context.Context, target string) (map[string]*dto.MetricFamily, error) {
	// One connection per fetch, closed after it: nothing lingers between
	// dst stats' samples.
	tr := &http.Transport{DisableKeepAlives: true}
	client := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	url := target
	if !strings.HasPrefix(target, "http://") && !strings.HasPrefix(target, "https://") {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", target)
		}
		url = "http://unix/metrics"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics from %s: %w", target, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics from %s: %w", target, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		return nil, fmt.Errorf("metrics from %s: HTTP %s", target, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("metrics from %s: %w", target, err)
	}
	return fams, nil
}

// OpSample is one op's counters in a Sample.
type OpSample struct {
	Count, Bytes, Errors uint64
	SumSeconds           float64
	Buckets              []Bucket // cumulative, by upper bound
}

// Bucket is a cumulative histogram bucket.
type Bucket struct {
	UpperBound float64
	Count      uint64
}

// Sample is a device's counters at one moment, read from its metrics.
type Sample struct {
	At       time.Time
	Ops      [metrics.NumOps]OpSample
	Inflight float64
	// Remote devices only (Remote set).
	Remote                                bool
	Resent, Timeouts, Reconnects, Corrupt uint64
	Connected                             bool
	Failed                                uint64
}

// DeviceSample extracts a device's sample from its daemon's metrics; it
// fails if they have no device metrics.
func DeviceSample(fams map[string]*dto.MetricFamily, at time.Time) (Sample, error) {
	s := Sample{At: at}
	req := fams["dst_device_requests_total"]
	if req == nil {
		return s, fmt.Errorf("no dst_device_* metrics: not a device daemon")
	}
	opIndex := func(m *dto.Metric) int {
		for _, l := range m.GetLabel() {
			if l.GetName() == "op" {
				for i, n := range metrics.Ops {
					if n == l.GetValue() {
						return i
					}
				}
			}
		}
		return -1
	}
	each := func(name string, f func(i int, m *dto.Metric)) {
		if fam := fams[name]; fam != nil {
			for _, m := range fam.GetMetric() {
				if i := opIndex(m); i >= 0 {
					f(i, m)
				}
			}
		}
	}
	each("dst_device_requests_total", func(i int, m *dto.Metric) { s.Ops[i].Count = uint64(m.GetCounter().GetValue()) })
	each("dst_device_bytes_total", func(i int, m *dto.Metric) { s.Ops[i].Bytes = uint64(m.GetCounter().GetValue()) })
	each("dst_device_errors_total", func(i int, m *dto.Metric) { s.Ops[i].Errors = uint64(m.GetCounter().GetValue()) })
	each("dst_device_request_duration_seconds", func(i int, m *dto.Metric) {
		h := m.GetHistogram()
		s.Ops[i].SumSeconds = h.GetSampleSum()
		for _, b := range h.GetBucket() {
			s.Ops[i].Buckets = append(s.Ops[i].Buckets, Bucket{b.GetUpperBound(), b.GetCumulativeCount()})
		}
	})
	s.Inflight = gauge(fams, "dst_device_inflight_requests")
	if fams["dst_txn_resent_total"] != nil {
		s.Remote = true
		s.Resent = uint64(gauge(fams, "dst_txn_resent_total"))
		s.Timeouts = uint64(gauge(fams, "dst_txn_timeouts_total"))
		s.Reconnects = uint64(gauge(fams, "dst_txn_reconnects_total"))
		s.Corrupt = uint64(gauge(fams, "dst_txn_corrupt_replies_total"))
		s.Failed = uint64(gauge(fams, "dst_txn_failed_total"))
		s.Connected = gauge(fams, "dst_txn_connected") == 1
	}
	return s, nil
}

// gauge sums the values of a family's series (counters or gauges).
func gauge(fams map[string]*dto.MetricFamily, name string) float64 {
	var v float64
	if fam := fams[name]; fam != nil {
		for _, m := range fam.GetMetric() {
			switch {
			case m.Counter != nil:
				v += m.GetCounter().GetValue()
			case m.Gauge != nil:
				v += m.GetGauge().GetValue()
			case m.Untyped != nil:
				v += m.GetUntyped().GetValue()
			}
		}
	}
	return v
}

// Rate is what happened between two samples.
type Rate struct {
	Seconds                     float64
	ReadIOPS, WriteIOPS         float64
	OtherIOPS                   float64 // flush, discard, write-zeroes
	ReadMBps, WriteMBps         float64 // 10^6 bytes per second
	AvgLatency, P99Latency      time.Duration
	Errors                      uint64
	Inflight                    float64
	Remote                      bool
	Resent, Timeouts, Reconnect uint64 // in the interval
	ReconnectsTotal             uint64
	Corrupt                     uint64
	Connected                   bool
}

// Delta computes the rates between prev and cur.
func Delta(prev, cur Sample) Rate {
	r := Rate{Seconds: cur.At.Sub(prev.At).Seconds(), Inflight: cur.Inflight, Remote: cur.Remote,
		Resent: cur.Resent - prev.Resent, Timeouts: cur.Timeouts - prev.Timeouts, Reconnect: cur.Reconnects - prev.Reconnects,
		ReconnectsTotal: cur.Reconnects, Corrupt: cur.Corrupt - prev.Corrupt, Connected: cur.Connected}
	if r.Seconds <= 0 {
		r.Seconds = math.SmallestNonzeroFloat64
	}
	var n uint64
	var sum float64
	buckets := map[float64]uint64{}
	for i := range cur.Ops {
		c, p := &cur.Ops[i], &prev.Ops[i]
		d := float64(c.Count - p.Count)
		switch metrics.Op(i) {
		case metrics.Read:
			r.ReadIOPS = d / r.Seconds
			r.ReadMBps = float64(c.Bytes-p.Bytes) / 1e6 / r.Seconds
		case metrics.Write:
			r.WriteIOPS = d / r.Seconds
			r.WriteMBps = float64(c.Bytes-p.Bytes) / 1e6 / r.Seconds
		default:
			r.OtherIOPS += d / r.Seconds
		}
		r.Errors += c.Errors - p.Errors
		n += c.Count - p.Count
		sum += c.SumSeconds - p.SumSeconds
		for j, b := range c.Buckets {
			v := b.Count
			if j < len(p.Buckets) {
				v -= p.Buckets[j].Count
			}
			buckets[b.UpperBound] += v
		}
	}
	if n > 0 {
		r.AvgLatency = time.Duration(sum / float64(n) * 1e9)
		r.P99Latency = quantile(buckets, n, 0.99)
	}
	return r
}

// quantile is the upper bound of the bucket holding quantile q of n
// observations (cumulative buckets by bound).
func quantile(buckets map[float64]uint64, n uint64, q float64) time.Duration {
	bounds := make([]float64, 0, len(buckets))
	for b := range buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	want := uint64(math.Ceil(q * float64(n)))
	for _, b := range bounds {
		if buckets[b] >= want {
			if math.IsInf(b, 1) {
				break
			}
			return time.Duration(b * 1e9)
		}
	}
	if len(bounds) > 1 {
		return time.Duration(bounds[len(bounds)-2] * 1e9) // beyond the last finite bound
	}
	return 0
}

// String is the one-line view of dst stats.
func (r Rate) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "read %7.0f IOPS %8.2f MB/s  write %7.0f IOPS %8.2f MB/s  other %5.0f/s  lat avg %s p99 %s  inflight %3.0f  errors %d",
		r.ReadIOPS, r.ReadMBps, r.WriteIOPS, r.WriteMBps, r.OtherIOPS, fmtLatency(r.AvgLatency), fmtLatency(r.P99Latency), r.Inflight, r.Errors)
	if r.Remote {
		conn := "down"
		if r.Connected {
			conn = "up"
		}
		fmt.Fprintf(&b, "  resent %d  timeouts %d  reconnects %d (total %d)  corrupt %d  conn %s",
			r.Resent, r.Timeouts, r.Reconnect, r.ReconnectsTotal, r.Corrupt, conn)
	}
	return b.String()
}

func fmtLatency(d time.Duration) string {
	switch {
	case d == 0:
		return "     -"
	case d < time.Millisecond:
		return fmt.Sprintf("%4.0fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%4.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%5.2fs", d.Seconds())
}
