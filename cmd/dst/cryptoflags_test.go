package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/txn"
)

// TestCryptoFlags: the crypto flags of attach and export fail clearly, before
// anything is opened or dialled: usage mistakes with exit status 2, key files
// that break a rule (permissions, length, missing) with the rule and the fix.
func TestCryptoFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.key")
	if err := run("keygen", good); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.key")
	b, _ := os.ReadFile(good)
	os.WriteFile(open, b, 0o644)
	os.Chmod(open, 0o644)
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, b[:31], 0o600)
	tests := []struct {
		args  []string
		usage bool
		want  string
	}{
		{[]string{"--cipher", "aes-256-gcm"}, true, "needs --key-file"},
		{[]string{"--cipher", "rot13", "--key-file", good}, true, `--cipher "rot13"`},
		{[]string{"--checksum", "md5"}, true, `--checksum "md5"`},
		{[]string{"--checksum", "crc32c", "--cipher", "aes-256-gcm", "--key-file", good}, true, "choose one"},
		{[]string{"--checksum", "sha256", "--key-file", good}, true, "only used with --cipher"},
		{[]string{"--cipher", "chacha20-poly1305", "--key-file", open}, false, "chmod 600"},
		{[]string{"--cipher", "aes-256-gcm", "--key-file", short}, false, "31 bytes"},
		{[]string{"--cipher", "aes-256-gcm", "--key-file", filepath.Join(dir, "none")}, false, "no such file"},
		{[]string{"--checksum", "crc32c", "--crypto-workers", "-1"}, true, "--crypto-workers -1 out of range"},
		{[]string{"--cipher", "aes-256-gcm", "--key-file", good, "--crypto-workers", "257"}, true, "out of range: need 0..256"},
		{[]string{"--crypto-workers", "2"}, true, "only used with --checksum or --cipher"},
	}
	for _, tt := range tests {
		for _, args := range [][]string{
			append([]string{"export", "--export", "d=/nonexistent", "--allow-all=rw"}, tt.args...),
			append(append([]string{"attach"}, tt.args...), "dst://127.0.0.1:1/d"),
		} {
			err := run(args...)
			var ue usageError
			if err == nil || errors.As(err, &ue) != tt.usage || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("dst %s: %v; want a (usage %v) error mentioning %q", strings.Join(args, " "), err, tt.usage, tt.want)
			}
		}
	}
}

// TestCryptoWorkersPool: --crypto-workers 0 is inline (no pool); N starts
// an adaptive pool of one worker that may grow to N.
func TestCryptoWorkersPool(t *testing.T) {
	if p := newCryptoPool(0); p != nil {
		t.Fatal("--crypto-workers 0 made a pool")
	}
	p := newCryptoPool(3)
	defer p.Close()
	if st := p.Stats(); st.Workers != 1 {
		t.Errorf("a new pool has %d workers, want 1 (it grows under load, up to 3)", st.Workers)
	}
}

// TestExportCryptoWorkers: dst export --cipher --crypto-workers 2 serves a
// client that has a pool too; 128 KiB writes and reads (above the inline
// threshold: sealed by the workers on both sides) come back intact.
func TestExportCryptoWorkers(t *testing.T) {
	const bs, blocks = 128 << 10, 16
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "k.key")
	if err := run("keygen", keyFile); err != nil {
		t.Fatal(err)
	}
	proc := startDst(t, "export", "--export", "disk="+exporttest.File(t, bs*blocks), "--allow-all=rw",
		"--listen", "dst://127.0.0.1:0", "--cipher", "aes-256-gcm", "--key-file", keyFile, "--crypto-workers", "2")
	line := proc.line(t)
	url, ok := strings.CutPrefix(line, "listening ")
	if !ok {
		t.Fatalf("line %q; stderr:\n%s", line, proc.stderr.String())
	}
	key, err := crypto.LoadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	o := clientOpts(url + "/disk")
	o.Crypto = crypto.Config{Suite: crypto.AES256GCM, Key: key}
	o.CryptoPool = newCryptoPool(2)
	defer o.CryptoPool.Close()
	c, err := txn.Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	want := make([][]byte, blocks)
	for b := range blocks {
		want[b] = make([]byte, bs)
		for j := range want[b] {
			want[b][j] = byte(b*7 + j*13)
		}
		if err := d.do(wire.OpWrite, uint64(b*bs), want[b]); err != nil {
			t.Fatalf("write block %d: %v", b, err)
		}
	}
	for b := range blocks {
		got := make([]byte, bs)
		if err := d.do(wire.OpRead, uint64(b*bs), got); err != nil {
			t.Fatalf("read block %d: %v", b, err)
		}
		if !bytes.Equal(got, want[b]) {
			t.Fatalf("block %d read back different data", b)
		}
	}
	c.Close(context.Background())
	proc.stop(t, 10*time.Second)
}

// TestRecoverCryptoWorkers: dst recover takes --crypto-workers like dst
// attach and checks its range before anything else (the suite is the state
// record's, checked once the record is read).
func TestRecoverCryptoWorkers(t *testing.T) {
	for _, n := range []string{"-1", "257"} {
		err := run("recover", "5", "--crypto-workers", n)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "--crypto-workers "+n+" out of range") {
			t.Errorf("dst recover 5 --crypto-workers %s: %v; want a usage error about the range", n, err)
		}
	}
}
