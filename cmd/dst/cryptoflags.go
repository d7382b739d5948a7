package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/dst-dev/dst/crypto"
)

// cryptoFlags are the frame protection flags of dst attach and dst export
// (docs/PROTOCOL.md §8). Both sides must give the same ones.
func cryptoFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "checksum", Usage: "checksum every frame with `ALG`: crc32c, sha256 or blake3; a corrupted frame is dropped and resent (the other side must use the same)"},
		&cli.StringFlag{Name: "cipher", Usage: "encrypt and authenticate every frame with `ALG`: aes-256-gcm or chacha20-poly1305, with the key of --key-file (the other side must use the same cipher and key)"},
		&cli.StringFlag{Name: "key-file", Usage: "the pre-shared key for --cipher: `FILE` of 32 bytes made by dst keygen, mode 0600"},
		&cli.IntFlag{Name: "crypto-workers", Usage: "seal payloads above 8-32 KiB (by suite) on a pool of up to `N` workers that grows under load and shrinks when idle; 0 seals and opens everything inline on the connection threads (measured faster when client and exporter share few CPUs, docs/BENCHMARKS.md)"},
	}
}

// maxCryptoWorkers bounds --crypto-workers.
const maxCryptoWorkers = 256

// cryptoWorkers checks --crypto-workers against the suite in effect: 0..
// maxCryptoWorkers, and a pool only with a checksum or a cipher.
func cryptoWorkers(c *cli.Context, s crypto.Suite) (int, error) {
	return checkCryptoWorkers("--crypto-workers", c.Int("crypto-workers"), s)
}

// checkCryptoWorkers checks a pool size given as name (a flag or a
// configuration key) against the suite in effect.
func checkCryptoWorkers(name string, n int, s crypto.Suite) (int, error) {
	switch {
	case n < 0 || n > maxCryptoWorkers:
		return 0, usagef("%s %d out of range: need 0..%d (0: inline)", name, n, maxCryptoWorkers)
	case n > 0 && s == crypto.None:
		return 0, usagef("%s is only used with --checksum or --cipher", name)
	}
	return n, nil
}

// newCryptoPool returns the pool for --crypto-workers n, or nil for 0
// (inline). It is adaptive (crypto.Pool): one worker always runs, more
// start while jobs wait, up to n, and those above one exit after 100 ms
// without work.
func newCryptoPool(n int) *crypto.Pool {
	if n == 0 {
		return nil
	}
	return crypto.NewPool(crypto.PoolConfig{Min: 1, Max: n})
}

// cryptoConfig reads the crypto flags: at most one of --checksum and
// --cipher, --key-file exactly with --cipher, and a key file that passes
// crypto.LoadKeyFile's rules.
func cryptoConfig(c *cli.Context) (crypto.Config, error) {
	s, err := crypto.SuiteFromFlags(c.String("checksum"), c.String("cipher"))
	if err != nil {
		return crypto.Config{}, usageError{err}
	}
	return loadCrypto(s, c.String("key-file"))
}

// loadCrypto checks a suite and key file and loads the key.
func loadCrypto(s crypto.Suite, keyFile string) (crypto.Config, error) {
	cfg := crypto.Config{Suite: s}
	switch {
	case s.Keyed() && keyFile == "":
		return cfg, usagef("--cipher %s needs --key-file FILE (create one with: dst keygen FILE)", s)
	case !s.Keyed() && keyFile != "":
		return cfg, usagef("--key-file is only used with --cipher aes-256-gcm|chacha20-poly1305")
	case keyFile == "":
		return cfg, nil
	}
	k, err := crypto.LoadKeyFile(keyFile)
	if err != nil {
		return cfg, fmt.Errorf("--key-file: %w", err)
	}
	cfg.Key = k
	return cfg, nil
}
