// Package deadline implements a resettable deadline that blocking calls can
// select on, with the semantics net.Conn requires of SetDeadline: a new
// deadline applies to calls already blocked, a deadline in the past expires
// at once, and the zero time means no deadline.
package deadline

import (
	"sync"
	"time"
)

// A Deadline is safe for concurrent use. The zero value is not usable; call New.
type Deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	c     chan struct{} // closed when the deadline has passed
}

// New returns a Deadline that is not set.
func New() *Deadline {
	return &Deadline{c: make(chan struct{})}
}

// Set sets the deadline to t; the zero Time clears it.
func (d *Deadline) Set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		// The timer fired: wait for its callback to close the channel so
		// that the state below is consistent.
		<-d.c
	}
	d.timer = nil
	expired := isClosed(d.c)
	if t.IsZero() {
		if expired {
			d.c = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if expired {
			d.c = make(chan struct{})
		}
		c := d.c
		d.timer = time.AfterFunc(dur, func() { close(c) })
		return
	}
	if !expired {
		close(d.c)
	}
}

// Done returns a channel that is closed when the deadline passes. Callers
// must fetch it again after each wake-up, as Set may replace it.
func (d *Deadline) Done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.c
}

// Expired reports whether the deadline has passed.
func (d *Deadline) Expired() bool {
	return isClosed(d.Done())
}

// Stop releases the timer, if any. The Deadline stays usable.
func (d *Deadline) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && d.timer.Stop() {
		d.timer = nil
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
