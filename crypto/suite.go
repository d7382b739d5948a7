package crypto

import (
	"fmt"
	"strconv"
	"strings"
)

// Mode is how frames are protected (PROTOCOL.md §8.1).
type Mode uint8

// Modes.
const (
	ModeNone     Mode = 0 // no trailer (protocol version 1 as is)
	ModeChecksum Mode = 1 // unkeyed checksum of header ‖ payload
	ModeAEAD     Mode = 2 // authenticated encryption with a pre-shared key
)

func (m Mode) String() string {
	switch m {
	case ModeNone:
		return "none"
	case ModeChecksum:
		return "checksum"
	case ModeAEAD:
		return "aead"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// Suite is a mode and an algorithm: mode<<8 | algorithm, as on the wire
// (the CRYPTO attribute starts with mode u8, alg u8).
type Suite uint16

// Suites (PROTOCOL.md §8.1).
const (
	None             Suite = 0
	CRC32C           Suite = Suite(ModeChecksum)<<8 | 1
	SHA256           Suite = Suite(ModeChecksum)<<8 | 2
	BLAKE3           Suite = Suite(ModeChecksum)<<8 | 3
	AES256GCM        Suite = Suite(ModeAEAD)<<8 | 1
	ChaCha20Poly1305 Suite = Suite(ModeAEAD)<<8 | 2
)

// Suites lists every suite but None, checksums first.
var Suites = []Suite{CRC32C, SHA256, BLAKE3, AES256GCM, ChaCha20Poly1305}

// MakeSuite returns the suite for a mode and an algorithm as read from
// the wire (not necessarily a known one: see Known).
func MakeSuite(m Mode, alg uint8) Suite { return Suite(m)<<8 | Suite(alg) }

// Mode returns the suite's mode.
func (s Suite) Mode() Mode { return Mode(s >> 8) }

// Alg returns the suite's algorithm number within its mode.
func (s Suite) Alg() uint8 { return uint8(s) }

// Known reports whether s is None or one of Suites.
func (s Suite) Known() bool {
	switch s {
	case None, CRC32C, SHA256, BLAKE3, AES256GCM, ChaCha20Poly1305:
		return true
	}
	return false
}

// Keyed reports whether s needs a key (and the keyed handshake).
func (s Suite) Keyed() bool { return s.Mode() == ModeAEAD }

// TagSize is the trailer size of s in bytes (TAG_SIZE), 0 for None or an
// unknown suite.
func (s Suite) TagSize() int {
	switch s {
	case CRC32C:
		return 4
	case SHA256, BLAKE3:
		return 32
	case AES256GCM, ChaCha20Poly1305:
		return 16
	}
	return 0
}

// String returns the name used by --checksum and --cipher ("crc32c",
// "aes-256-gcm"...), "none", or "suite(mode m, algorithm a)".
func (s Suite) String() string {
	switch s {
	case None:
		return "none"
	case CRC32C:
		return "crc32c"
	case SHA256:
		return "sha256"
	case BLAKE3:
		return "blake3"
	case AES256GCM:
		return "aes-256-gcm"
	case ChaCha20Poly1305:
		return "chacha20-poly1305"
	}
	return fmt.Sprintf("suite(mode %d, algorithm %d)", s.Mode(), s.Alg())
}

// ParseChecksum parses a --checksum value: crc32c, sha256, blake3, or
// none/"" (None).
func ParseChecksum(name string) (Suite, error) {
	switch strings.ToLower(name) {
	case "", "none":
		return None, nil
	case "crc32c":
		return CRC32C, nil
	case "sha256", "sha-256":
		return SHA256, nil
	case "blake3":
		return BLAKE3, nil
	}
	return None, fmt.Errorf("--checksum %q: want crc32c, sha256, blake3 or none", name)
}

// ParseCipher parses a --cipher value: aes-256-gcm, chacha20-poly1305, or
// none/"" (None).
func ParseCipher(name string) (Suite, error) {
	switch strings.ToLower(name) {
	case "", "none":
		return None, nil
	case "aes-256-gcm", "aes256gcm":
		return AES256GCM, nil
	case "chacha20-poly1305", "chacha20poly1305":
		return ChaCha20Poly1305, nil
	}
	return None, fmt.Errorf("--cipher %q: want aes-256-gcm, chacha20-poly1305 or none", name)
}

// SuiteFromFlags combines --checksum and --cipher: at most one may be set
// (an AEAD already detects corruption).
func SuiteFromFlags(checksum, cipher string) (Suite, error) {
	c, err := ParseChecksum(checksum)
	if err != nil {
		return None, err
	}
	a, err := ParseCipher(cipher)
	if err != nil {
		return None, err
	}
	if c != None && a != None {
		return None, fmt.Errorf("--checksum %s and --cipher %s: choose one (%s already detects corruption)", c, a, a)
	}
	if a != None {
		return a, nil
	}
	return c, nil
}
