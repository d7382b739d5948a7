package deadline

import (
	"testing"
	"time"
)

func expiresWithin(t *testing.T, d *Deadline, within time.Duration) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(within):
		t.Fatalf("deadline did not expire within %v", within)
	}
}

func TestDeadline(t *testing.T) {
	d := New()
	if d.Expired() {
		t.Fatal("a new Deadline is expired")
	}
	// Past: expired at once.
	d.Set(time.Now().Add(-time.Second))
	if !d.Expired() {
		t.Fatal("past deadline not expired")
	}
	// Cleared: no longer expired, and stays so.
	d.Set(time.Time{})
	if d.Expired() {
		t.Fatal("cleared deadline still expired")
	}
	// Future: a waiter that fetched Done before is woken.
	c := d.Done()
	d.Set(time.Now().Add(20 * time.Millisecond))
	select {
	case <-c:
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken by the deadline")
	}
	// Extending a pending deadline keeps it from firing early.
	d.Set(time.Time{})
	d.Set(time.Now().Add(10 * time.Millisecond))
	d.Set(time.Now().Add(time.Hour))
	time.Sleep(30 * time.Millisecond)
	if d.Expired() {
		t.Fatal("extended deadline fired at the old time")
	}
	// Shortening it to the past fires at once.
	d.Set(time.Now())
	expiresWithin(t, d, time.Second)
	d.Stop()
}
