package export_test

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/wire"
)

const (
	testSize = 16 << 20
	bs       = 4096
)

// loopbackACL admits 127.0.0.1 and ::1 read-write (local peers are rw).
func loopbackACL() export.ACL {
	return export.ACL{Rules: []export.Rule{mustRule("127.0.0.1/32=rw"), mustRule("::1=rw")}}
}

func mustRule(s string) export.Rule {
	r, err := export.ParseRule(s)
	if err != nil {
		panic(err)
	}
	return r
}

// config is one read-write export "disk" of path (and "ro" of roPath if
// given), admitting loopback peers.
func config(path string) export.Config {
	return export.Config{
		Exports: []export.ExportConfig{{Name: "disk", Path: path}},
		Access:  loopbackACL(),
		Name:    "test-exporter",
	}
}

// pattern returns n bytes that depend on seed.
func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func fileAt(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func write(id, off uint64, data []byte) wire.Request {
	return wire.Request{Op: wire.OpWrite, ID: id, Offset: off, Length: uint32(len(data))}
}

func read(id, off uint64, n int) wire.Request {
	return wire.Request{Op: wire.OpRead, ID: id, Offset: off, Length: uint32(n)}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkNoLeak fails the test if goroutines started since base are still
// running after a settle time.
func checkNoLeak(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines after shutdown, %d before:\n%s", n, base, stacksOf(string(buf)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stacksOf keeps the goroutines that are not the test framework's.
func stacksOf(all string) string {
	var keep []string
	for _, g := range strings.Split(all, "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*T).Run") ||
			strings.Contains(g, "testing.runTests") || strings.Contains(g, "signal.signal_recv") {
			continue
		}
		keep = append(keep, g)
	}
	return strings.Join(keep, "\n\n")
}
