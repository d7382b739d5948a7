package sched

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestSecondField(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1615323 19145365 5\n", 19145365, true},
		{"1 0 0\n", 0, true},
		{"12", 0, false},
		{"", 0, false},
	} {
		v, ok := secondField([]byte(tt.in))
		if v != tt.want || ok != tt.ok {
			t.Errorf("%q: %d %v, want %d %v", tt.in, v, ok, tt.want, tt.ok)
		}
	}
}

// TestContended: a thread that shares one CPU's worth of time with as many
// spinning threads as there are CPUs waits on a run queue, and says so; the
// same thread alone mostly does not.
func TestContended(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var m Monitor
	defer m.Close()
	if m.Contended(time.Now()); m.fd < 0 {
		t.Skip("no /proc/thread-self/schedstat")
	}
	spin := func(d time.Duration) bool {
		end := time.Now().Add(d)
		c := false
		for time.Now().Before(end) {
			c = m.Contended(time.Now())
		}
		return c
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for {
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	busy := spin(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if !busy {
		t.Errorf("not contended with %d spinning threads on %d CPUs", 2*runtime.NumCPU(), runtime.NumCPU())
	}
}
