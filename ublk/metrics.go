//go:build linux

package ublk

import "github.com/dst-dev/dst/internal/metrics"

// IO sums the request counters of the device's queues: per operation the
// completed requests, their bytes, errors and latencies (from the moment
// the queue hands a request to the target to its COMMIT, measured on the
// queue's goroutine), and the requests started (in flight = started -
// completed). Any goroutine may call it once Create or Recover returned.
func (d *Device) IO() metrics.IOSnapshot {
	var s metrics.IOSnapshot
	for _, q := range d.queues {
		x := q.io.Snapshot()
		s.Add(&x)
	}
	return s
}
