package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
