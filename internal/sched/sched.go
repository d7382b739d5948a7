// Package sched tells a thread whether it has been waiting for a CPU.
//
// The client and the exporter overlap their crypto by writing a batch of
// frames a chunk at a time as it is sealed (so the peer opens the first
// frames while the rest are sealed). That only pays when the peer has a
// CPU to run on meanwhile; on an oversubscribed machine every extra write
// and wake-up costs CPU that nobody has spare, and whole batches are
// cheaper. A thread that has itself been waiting on a run queue is the
// sign of that, and the kernel counts it per thread
// (/proc/thread-self/schedstat: time on CPU, time waiting to run, both in
// ns).
package sched

import (
	"time"

	"golang.org/x/sys/unix"
)

// Every controls how often Contended samples the kernel's counters.
const Every = 20 * time.Millisecond

// Waiting is the share of wall time spent waiting on a run queue above
// which the thread counts as contended.
const Waiting = 0.10

// Monitor samples the run-queue delay of the thread that calls it. It
// belongs to one OS thread (a goroutine locked with runtime.LockOSThread),
// which must make every call, the first one included. The zero value is
// ready; Close releases it.
type Monitor struct {
	fd        int // /proc/thread-self/schedstat of the owner, 0: not open yet, -1: unavailable
	at        int64
	delay     int64
	contended bool
	buf       [96]byte
}

// Contended reports whether the thread waited for a CPU more than
// Waiting of the time over its last sampling interval (Every). now is the
// caller's clock reading (time.Now). Without the counters (no /proc, or
// a kernel without schedstats) it reports false.
func (m *Monitor) Contended(now time.Time) bool {
	t := now.UnixNano()
	if t-m.at < int64(Every) {
		return m.contended
	}
	if m.fd == 0 {
		fd, err := unix.Open("/proc/thread-self/schedstat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fd = -1
		}
		m.fd = fd
	}
	if m.fd < 0 {
		return false
	}
	n, err := unix.Pread(m.fd, m.buf[:], 0)
	if err != nil || n <= 0 {
		return m.contended
	}
	d, ok := secondField(m.buf[:n])
	if !ok {
		return m.contended
	}
	if m.at != 0 {
		m.contended = float64(d-m.delay) > Waiting*float64(t-m.at)
	}
	m.at, m.delay = t, d
	return m.contended
}

// Close releases the counters' file.
func (m *Monitor) Close() {
	if m.fd > 0 {
		unix.Close(m.fd)
	}
	m.fd = -1
}

// secondField parses the second decimal field of "oncpu delay slices\n".
func secondField(b []byte) (int64, bool) {
	i := 0
	for i < len(b) && b[i] != ' ' {
		i++
	}
	i++
	var v int64
	start := i
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		v = v*10 + int64(b[i]-'0')
	}
	return v, i > start
}
