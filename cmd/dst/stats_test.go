package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/monitor"
	"github.com/dst-dev/dst/internal/state"
)

// useStateDir points the commands at a fresh state directory.
func useStateDir(t *testing.T) string {
	dir := t.TempDir()
	old := stateDir
	stateDir = state.Dir(dir)
	t.Cleanup(func() { stateDir = old })
	return dir
}

// TestMetricsFlagsFailBeforeAnything: a malformed --metrics-listen is a
// usage error on every command that takes it, before root, the driver or
// the network are looked at.
func TestMetricsFlagsFailBeforeAnything(t *testing.T) {
	for _, args := range [][]string{
		{"add", "null", "--size", "1GiB", "--metrics-listen", "9110"},
		{"add", "file", "--path", os.Args[0], "--metrics-listen", "localhost"},
		{"attach", "--metrics-listen", "127.0.0.1:", "dst://h/e"},
		{"recover", "--metrics-listen", "nohost", "3"},
		{"export", "--allow-all=rw", "--export", "a=/nonexistent", "--metrics-listen", "bad"},
		{"stats"},
		{"stats", "--count", "-1", "0"},
		{"stats", "--interval", "1ms", "0"},
		{"stats", "x"},
		{"stats", "0", "--count", "-1"},
		{"stats", "0", "--bogus"},
		{"stats", "0", "1"},
	} {
		err := run(args...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) {
			t.Errorf("dst %s: %v; want a usage error", strings.Join(args, " "), err)
			continue
		}
		if args[0] != "stats" && !strings.Contains(err.Error(), "--metrics-listen") {
			t.Errorf("dst %s: %v; want it to name --metrics-listen", strings.Join(args, " "), err)
		}
	}
}

// TestExportMetricsPortTaken: a --metrics-listen address that cannot be
// bound stops the exporter before it listens or opens anything.
func TestExportMetricsPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	file := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(file, make([]byte, 1<<20), 0o600)
	err = run("export", "--allow-all=rw", "--export", "a="+file, "--listen", "dst://127.0.0.1:0", "--metrics-listen", l.Addr().String())
	var ue usageError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "--metrics-listen") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("export with a taken metrics port: %v", err)
	}
}

// TestStats runs dst stats against a daemon's metrics socket served the
// way device daemons serve it, while the counters move.
func TestStats(t *testing.T) {
	useStateDir(t)
	var io metrics.IO
	reg, err := monitor.NewRegistry(monitor.NewDeviceCollector(monitor.Device{ID: 5, Kind: "null", IO: io.Snapshot}))
	if err != nil {
		t.Fatal(err)
	}
	l, err := monitor.ListenUnix(metricsSocket(5))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(metricsSocket(5)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	srv := monitor.NewServer(reg)
	srv.Serve(l, func(err error) { t.Error(err) })
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // a device doing 4 KiB writes
		for ctx.Err() == nil {
			io.Start()
			io.Done(metrics.Write, 4096, 50_000, false)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	var out bytes.Buffer
	if err := runStats(context.Background(), &out, 5, 3, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), out.String())
	}
	for _, ln := range lines {
		if !strings.Contains(ln, "ublkb5") || !strings.Contains(ln, "write") || strings.Contains(ln, "write       0 IOPS") || !strings.Contains(ln, "µs") {
			t.Errorf("line %q: want ublkb5 with writes and a latency", ln)
		}
	}
	t.Log(out.String())
}

// TestStatsUnavailable: the reasons dst stats gives when there is no
// socket to read.
func TestStatsUnavailable(t *testing.T) {
	dir := useStateDir(t)
	check := func(id uint32, want string) {
		t.Helper()
		err := runStats(context.Background(), &bytes.Buffer{}, id, 1, 10*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("stats %d: %v; want %q", id, err, want)
		}
	}
	check(1, "no dst daemon serves it")
	// A record whose daemon is dead (a pid beyond pid_max).
	if err := stateDir.Write(&state.Record{ID: 2, PID: 1 << 30, Kind: "null"}); err != nil {
		t.Fatal(err)
	}
	check(2, "is not running")
	// A live daemon without a socket.
	if err := stateDir.Write(&state.Record{ID: 3, PID: os.Getpid(), Kind: "null"}); err != nil {
		t.Fatal(err)
	}
	check(3, "serves no metrics socket")
	// A stale socket nobody serves.
	l, err := net.Listen("unix", filepath.Join(dir, "ublk4.metrics"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	check(4, "no dst daemon serves it")
	if err := stateDir.Write(&state.Record{ID: 4, PID: 1 << 30, Kind: "null"}); err != nil {
		t.Fatal(err)
	}
	check(4, "is not running")
}

// TestStatsFlagsAfterID: dst stats ID --count N works like dst stats
// --count N ID (here against no daemon: the error is about the device).
func TestStatsFlagsAfterID(t *testing.T) {
	useStateDir(t)
	for _, args := range [][]string{{"stats", "9", "--count", "2", "--interval", "20ms"}, {"stats", "--count", "2", "9"}} {
		err := run(args...)
		var ue usageError
		if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "device 9: no dst daemon serves it") {
			t.Errorf("dst %s: %v", strings.Join(args, " "), err)
		}
	}
}
