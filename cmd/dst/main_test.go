package main

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]uint64{
		"4096": 4096, "1KiB": 1024, "1MiB": 1 << 20, "1GiB": 1 << 30, "2TiB": 2 << 40,
		"1G": 1 << 30, "512M": 512 << 20, "4k": 4096, "1.5GiB": 3 << 29, "1MB": 1e6, "10kB": 10000,
		" 64MiB ": 64 << 20, "100B": 100,
	}
	for in, want := range good {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1Gx", "GiB", "-1GiB", "1.3B", "abc", "18446744073709551616", "20000000TiB", "NaNGiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
	if _, err := parseSize("1Gx"); err == nil || !strings.Contains(err.Error(), "KiB, MiB, GiB") {
		t.Errorf("error does not list the units: %v", err)
	}
}

func TestFormatSize(t *testing.T) {
	for in, want := range map[uint64]string{1 << 30: "1GiB", 3 << 29: "1536MiB", 1000: "1000B", 0: "0B"} {
		if got := formatSize(in); got != want {
			t.Errorf("formatSize(%d) = %s, want %s", in, got, want)
		}
	}
}

// run executes the CLI in-process and returns its error.
func run(args ...string) error {
	app := newApp()
	return app.Run(interspersed(app, append([]string{"dst"}, args...)))
}

// TestBadFlagsFailBeforeAnything: command-line mistakes are usage errors
// (exit status 2) that name the problem, found before any device or
// connection is attempted (this host has no ublk driver, so reaching that
// point would give a different error).
func TestBadFlagsFailBeforeAnything(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"add", "null", "--size", "1Gx"}, "not understood"},
		{[]string{"add", "null"}, "--size is required"},
		{[]string{"add", "null", "--size", "1GiB", "-q", "0"}, "--queues 0 out of range"},
		{[]string{"add", "null", "--size", "1GiB", "-d", "5000"}, "--depth 5000 out of range"},
		{[]string{"add", "null", "--size", "1GiB", "--bs", "1024"}, "--bs 1024"},
		{[]string{"add", "null", "--size", "1000", "--bs", "4096"}, "not a positive multiple"},
		{[]string{"add", "null", "--size", "1GiB", "--max-io", "1000"}, "--max-io"},
		{[]string{"del"}, "which device"},
		{[]string{"del", "abc"}, "not a device id"},
		{[]string{"del", "--all", "3"}, "not both"},
		{[]string{"attach"}, "exactly one URL"},
		{[]string{"attach", "foo://x/y"}, "accepted"},
		{[]string{"attach", "dst://host:10811"}, "names no export"},
		{[]string{"attach", "--retries", "-1", "dst://h/e"}, "--retries -1"},
		{[]string{"--log-format", "xml", "version"}, "--log-format"},
		{[]string{"add", "null", "--size", "1GiB", "--bogus"}, "bogus"},
		{[]string{"attach", "--nope", "dst://h/e"}, "nope"},
		{[]string{"attach", "nbd://"}, "no server host"},
		{[]string{"attach", "nbd+unix:///disk"}, "socket=/PATH"},
		{[]string{"attach", "nbds://h/disk"}, "TLS"},
		{[]string{"attach", "--checksum", "crc32c", "nbd://h/disk"}, "NBD servers do not speak"},
		{[]string{"add", "file"}, "--path"},
		{[]string{"add", "file", "--path", "/tmp", "-q", "0"}, "--queues 0"},
		{[]string{"export", "--export", "a=/nonexistent"}, "access list"},
		{[]string{"--log-level", "loud", "version"}, "--log-level"},
	}
	for _, tt := range tests {
		err := run(tt.args...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("dst %s: %v; want a usage error mentioning %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}

// TestAddFileBadPaths: a directory, an empty file and a missing file are
// refused with a message before any device is attempted.
func TestAddFileBadPaths(t *testing.T) {
	dir := t.TempDir()
	empty := dir + "/empty"
	os.WriteFile(empty, nil, 0o600)
	for path, want := range map[string]string{dir: "directory", empty: "empty", dir + "/missing": "does not exist"} {
		err := run("add", "file", "--path", path)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), want) {
			t.Errorf("add file --path %s: %v; want %q", path, err, want)
		}
	}
}

func TestNoDriverMessage(t *testing.T) {
	if _, err := os.Stat("/dev/ublk-control"); err == nil {
		t.Skip("this host has ublk")
	}
	err := run("features")
	if err == nil || !strings.Contains(err.Error(), "/dev/ublk-control is missing") || !strings.Contains(err.Error(), "modprobe ublk_drv") {
		t.Fatalf("dst features without ublk: %v", err)
	}
	var ue usageError
	if errors.As(err, &ue) {
		t.Fatal("a missing driver is not a usage error")
	}
}
