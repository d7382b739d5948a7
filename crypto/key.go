package crypto

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// KeySize is the size of a pre-shared key.
const KeySize = 32

// Key is a pre-shared key (PROTOCOL.md §8.7). Its String and GoString never
// print the key.
type Key [KeySize]byte

// String returns "Key(redacted)".
func (Key) String() string { return "Key(redacted)" }

// GoString returns "Key(redacted)", so %#v does not print the key either.
func (Key) GoString() string { return "Key(redacted)" }

// ErrKeyFile is matched (errors.Is) by every error of LoadKeyFile that is
// about the file's contents or permissions (not an I/O error).
var ErrKeyFile = errors.New("crypto: bad key file")

type keyFileError struct {
	path, msg string
}

func (e *keyFileError) Error() string        { return "key file " + e.path + ": " + e.msg }
func (e *keyFileError) Is(target error) bool { return target == ErrKeyFile }

// LoadKeyFile reads a key file: exactly 32 bytes, or 64 hex digits with an
// optional trailing newline. It refuses, with a message that says why and
// what to do, a file that is not a regular file (symbolic links are
// followed), one that group or others may read or write (mode & 0o077), one
// of another length or with bad hex, and an all-zero key. The checks use
// the opened file (fstat), so the file cannot be swapped between check and
// read.
func LoadKeyFile(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, &keyFileError{path, fmt.Sprintf("not a regular file (%v)", fi.Mode().Type())}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, &keyFileError{path, fmt.Sprintf("mode %04o lets group or others access it; run chmod 600 %s", perm, path)}
	}
	const maxLen = 2*KeySize + 1
	if fi.Size() > maxLen {
		return nil, &keyFileError{path, fmt.Sprintf("%d bytes; a key file holds %d bytes (or %d hex digits); create one with dst keygen", fi.Size(), KeySize, 2*KeySize)}
	}
	buf := make([]byte, maxLen+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer clear(buf)
	k, err := parseKey(buf[:n])
	if err != nil {
		return nil, &keyFileError{path, err.Error()}
	}
	return k, nil
}

// parseKey accepts 32 raw bytes, or 64 hex digits optionally followed by
// "\n", and refuses an all-zero key.
func parseKey(b []byte) (*Key, error) {
	k := new(Key)
	switch len(b) {
	case KeySize:
		copy(k[:], b)
	case 2 * KeySize, 2*KeySize + 1:
		if len(b) == 2*KeySize+1 && b[2*KeySize] != '\n' {
			return nil, fmt.Errorf("%d bytes: not %d raw bytes, and not %d hex digits followed by a newline", len(b), KeySize, 2*KeySize)
		}
		if _, err := hex.Decode(k[:], b[:2*KeySize]); err != nil {
			return nil, fmt.Errorf("%d bytes but not hex (%v): a key file holds %d raw bytes or %d hex digits", len(b), err, KeySize, 2*KeySize)
		}
	default:
		return nil, fmt.Errorf("%d bytes; a key file holds %d bytes (or %d hex digits); create one with dst keygen", len(b), KeySize, 2*KeySize)
	}
	if *k == (Key{}) {
		return nil, errors.New("the key is all zeros; create a random one with dst keygen")
	}
	return k, nil
}

// WriteKeyFile creates path with mode 0600 and writes 32 bytes from
// crypto/rand to it. It never overwrites: an existing path (even a dangling
// symbolic link) is an error matching fs.ErrExist. The data is synced
// before it returns; on a write error the file is removed.
func WriteKeyFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return existError{path}
		}
		return err
	}
	var k Key
	rand.Read(k[:]) // never fails (Go ≥ 1.24 crashes instead)
	_, err = f.Write(k[:])
	clear(k[:])
	if err == nil {
		// umask only removes bits, but be exact about what we promise.
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	return nil
}

// existError: WriteKeyFile refuses to overwrite; errors.Is(err,
// fs.ErrExist) is true.
type existError struct{ path string }

func (e existError) Error() string {
	return e.path + " already exists; keygen never overwrites a key (remove it first if you mean to replace it)"
}

func (e existError) Is(target error) bool { return target == fs.ErrExist }
