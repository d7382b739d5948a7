package crypto

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	raw := []byte(strings.Repeat("k", 32))
	hexKey := strings.Repeat("6b", 32)
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := []struct {
		name string
		data []byte
	}{
		{"raw", raw},
		{"hex", []byte(hexKey)},
		{"hex newline", []byte(hexKey + "\n")},
		{"HEX", []byte(strings.ToUpper(hexKey))},
	}
	for _, tt := range good {
		k, err := LoadKeyFile(write(tt.name, tt.data, 0o600))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if string(k[:]) != string(raw) {
			t.Errorf("%s: wrong key", tt.name)
		}
	}
	os.Symlink(filepath.Join(dir, "raw"), filepath.Join(dir, "link"))
	if _, err := LoadKeyFile(filepath.Join(dir, "link")); err != nil {
		t.Errorf("symlink to a good key: %v", err)
	}

	bad := []struct {
		name string
		path string
		want string
	}{
		{"group readable", write("g", raw, 0o640), "mode 0640 lets group or others access it; run chmod 600"},
		{"world readable", write("w", raw, 0o604), "mode 0604"},
		{"group writable", write("gw", raw, 0o620), "mode 0620"},
		{"short", write("short", raw[:31], 0o600), "31 bytes; a key file holds 32 bytes"},
		{"long", write("long", append(raw, 'x'), 0o600), "33 bytes"},
		{"empty", write("empty", nil, 0o600), "0 bytes"},
		{"big", write("big", make([]byte, 4096), 0o600), "4096 bytes"},
		{"bad hex", write("badhex", []byte(strings.Repeat("zz", 32)), 0o600), "not hex"},
		{"hex no newline", write("hexcr", []byte(hexKey+"\r"), 0o600), "not 32 raw bytes"},
		{"zeros", write("zeros", make([]byte, 32), 0o600), "all zeros"},
		{"directory", dir, "not a regular file"},
	}
	for _, tt := range bad {
		_, err := LoadKeyFile(tt.path)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrKeyFile) {
			t.Errorf("%s: %v, want ErrKeyFile mentioning %q", tt.name, err, tt.want)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	var k Key
	if s := fmt.Sprintf("%v %s %#v", k, k, k); strings.Contains(s, "0") && !strings.Contains(s, "redacted") {
		t.Errorf("key printed: %s", s)
	}
}

func TestWriteKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := WriteKeyFile(p); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("%v %v", fi.Mode(), err)
	}
	k1, err := LoadKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	if err := WriteKeyFile(p); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "never overwrites") {
		t.Fatalf("overwrite: %v", err)
	}
	after, _ := os.ReadFile(p)
	if string(before) != string(after) {
		t.Fatal("the key changed")
	}
	// A dangling symlink is not followed.
	os.Symlink(filepath.Join(dir, "elsewhere"), filepath.Join(dir, "dangling"))
	if err := WriteKeyFile(filepath.Join(dir, "dangling")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("dangling symlink: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "elsewhere")); err == nil {
		t.Fatal("wrote through a dangling symlink")
	}
	p2 := filepath.Join(dir, "key2")
	WriteKeyFile(p2)
	k2, _ := LoadKeyFile(p2)
	if *k1 == *k2 {
		t.Fatal("two keys are equal")
	}
}

func TestSuiteNames(t *testing.T) {
	for _, s := range Suites {
		var got Suite
		var err error
		if s.Keyed() {
			got, err = ParseCipher(s.String())
		} else {
			got, err = ParseChecksum(s.String())
		}
		if err != nil || got != s {
			t.Errorf("%v: %v %v", s, got, err)
		}
	}
	if _, err := SuiteFromFlags("crc32c", "aes-256-gcm"); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("both flags: %v", err)
	}
	if s, err := SuiteFromFlags("none", "chacha20-poly1305"); err != nil || s != ChaCha20Poly1305 {
		t.Errorf("%v %v", s, err)
	}
	if _, err := ParseCipher("aes-128-gcm"); err == nil || !strings.Contains(err.Error(), "aes-256-gcm, chacha20-poly1305") {
		t.Errorf("unknown cipher: %v", err)
	}
	if _, err := ParseChecksum("md5"); err == nil || !strings.Contains(err.Error(), "crc32c, sha256, blake3") {
		t.Errorf("unknown checksum: %v", err)
	}
}
