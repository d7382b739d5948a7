// Package leakcheck is a tiny goroutine-leak check for tests: it compares
// runtime.NumGoroutine before a test and after its cleanups, allowing a short
// time for goroutines that are already ending to exit.
package leakcheck

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// Settle is how long Check waits for the goroutine count to come back down.
const Settle = 5 * time.Second

// Check records the number of goroutines now and registers a cleanup that
// fails t if, after every cleanup registered later has run, more goroutines
// are alive than before (after waiting up to Settle). Call it first in a test
// so that its cleanup runs last. Tests using it must not run in parallel.
func Check(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(Settle)
		n := runtime.NumGoroutine()
		for n > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			n = runtime.NumGoroutine()
		}
		if n > before {
			t.Errorf("goroutine leak: %d goroutines before the test, %d after\n%s", before, n, stacks())
		}
	})
}

func stacks() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	// Keep the report readable: drop the goroutine running this check.
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "leakcheck.stacks") {
			continue
		}
		out = append(out, g)
	}
	return strings.Join(out, "\n\n")
}
