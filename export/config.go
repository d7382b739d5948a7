package export

import (
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/wire"
)

// Defaults of Config.
const (
	DefaultMaxBufferBytes = 64 << 20
	DefaultSessionLinger  = 5 * time.Minute
	DefaultIdleTimeout    = 10 * time.Minute
	// HandshakeTimeout bounds the wait for a HELLO and the WELCOME write.
	HandshakeTimeout = 10 * time.Second
	// shutdownGrace is how long a connection still in its handshake may
	// take to send its HELLO (and get BUSY) once Shutdown has begun.
	shutdownGrace = time.Second
)

// Config configures a Server. Zero values take the defaults.
type Config struct {
	// Exports to serve; at least one.
	Exports []ExportConfig
	// Access is the access list (see ACL); it must not be empty.
	Access ACL
	// MaxInflight is the most requests a connection may have outstanding
	// (the client may ask for fewer). Default wire.DefaultMaxInflight,
	// at most wire.MaxInflightLimit.
	MaxInflight uint32
	// MaxTransfer is the largest READ/WRITE payload. It is rounded down to
	// a multiple of each export's logical block. Default
	// wire.DefaultMaxTransfer, at most wire.MaxTransferLimit.
	MaxTransfer uint32
	// MaxBufferBytes bounds the data buffers a connection holds (payloads
	// read and not yet written, reads not yet sent). Above it the reader
	// stops reading until buffers come back: backpressure, never an
	// error. A single request larger than it is still served. Default
	// DefaultMaxBufferBytes.
	MaxBufferBytes int64
	// SessionLinger is how long a session whose connection ended is kept
	// for a resume. Default DefaultSessionLinger; negative: sessions are
	// forgotten as soon as their connection ends.
	SessionLinger time.Duration
	// IdleTimeout closes a connection that has sent nothing and has
	// nothing in flight for that long. Default DefaultIdleTimeout;
	// negative: never.
	IdleTimeout time.Duration
	// Name is the exporter name sent in WELCOME (default: the host name).
	Name string
	// Log receives the server's log lines (default: none).
	Log *zap.Logger
	// Crypto protects every connection's frames (PROTOCOL.md §8), for all
	// exports of the server alike: Suite None (the default) accepts only
	// clients without crypto; a checksum suite or an AEAD suite (with Key)
	// accepts only clients configured with the same suite and key: any
	// other client is refused at the handshake. Crypto.Rand is for tests.
	Crypto crypto.Config
	// CryptoPool, if set, seals READ replies whose payload is above
	// crypto.DefaultInline on its workers, in parallel, while the
	// connection's thread waits before the WRITEV; nil seals everything
	// on the connection's thread. The caller owns the pool (closes it
	// after the server).
	CryptoPool *crypto.Pool
	// CryptoWorkers is the pool size the configuration asked for (dst
	// export --crypto-workers, crypto_workers in its file; 0 inline). The
	// server does not use it: whoever builds the Config makes CryptoPool
	// from it.
	CryptoWorkers int

	// counters shared by the server's connections (set by withDefaults)
	counters *counters

	// maxSessions overrides maxSessionsHeld (tests).
	maxSessions int
	// ioDelay makes every op a slow one (tests): it goes to a sync helper,
	// which sleeps that long before doing it.
	ioDelay time.Duration
	// beforeDispatch is called on the loop before each op is dispatched
	// (tests; it may block the loop).
	beforeDispatch func(id uint64)
}

// ExportConfig is one export.
type ExportConfig struct {
	// Name is the export name clients ask for: 1..255 bytes of
	// [A-Za-z0-9._-], not "." or "..".
	Name string
	// Path is a regular file or a block device.
	Path string
	// ReadOnly opens it read-only: every session is read-only and writes
	// get EROFS.
	ReadOnly bool
	// Buffered goes through the page cache instead of O_DIRECT (for
	// filesystems without O_DIRECT).
	Buffered bool
	// Faults injects storage faults (tests, dst export's hidden --fault-*
	// flags): see backend.Faults. Every op then goes to the sync helpers.
	Faults *backend.Faults
}

// withDefaults returns cfg with defaults filled in, or an error naming what
// is wrong. It does not open anything.
func (cfg Config) withDefaults() (Config, *aclTable, error) {
	if len(cfg.Exports) == 0 {
		return cfg, nil, fmt.Errorf("no exports: add --export NAME=PATH")
	}
	seen := map[string]bool{}
	for _, e := range cfg.Exports {
		if err := wire.ValidExportName(e.Name); err != nil {
			var reason string
			if he, ok := err.(*wire.HandshakeError); ok {
				reason = he.Reason
			} else {
				reason = err.Error()
			}
			return cfg, nil, fmt.Errorf("export %q: bad name: %s", e.Name, reason)
		}
		if seen[e.Name] {
			return cfg, nil, fmt.Errorf("export %q is given twice", e.Name)
		}
		seen[e.Name] = true
		if e.Path == "" {
			return cfg, nil, fmt.Errorf("export %q: empty path", e.Name)
		}
	}
	acl, err := cfg.Access.compile()
	if err != nil {
		return cfg, nil, err
	}
	switch {
	case cfg.MaxInflight == 0:
		cfg.MaxInflight = wire.DefaultMaxInflight
	case cfg.MaxInflight > wire.MaxInflightLimit:
		return cfg, nil, fmt.Errorf("max inflight %d exceeds the protocol limit %d", cfg.MaxInflight, wire.MaxInflightLimit)
	}
	switch {
	case cfg.MaxTransfer == 0:
		cfg.MaxTransfer = wire.DefaultMaxTransfer
	case cfg.MaxTransfer > wire.MaxTransferLimit:
		return cfg, nil, fmt.Errorf("max transfer %d exceeds the protocol limit %d (32 MiB)", cfg.MaxTransfer, wire.MaxTransferLimit)
	case cfg.MaxTransfer < 512:
		return cfg, nil, fmt.Errorf("max transfer %d is below the smallest logical block (512)", cfg.MaxTransfer)
	}
	switch {
	case cfg.MaxBufferBytes == 0:
		cfg.MaxBufferBytes = DefaultMaxBufferBytes
	case cfg.MaxBufferBytes < 0:
		return cfg, nil, fmt.Errorf("max buffer bytes %d is negative", cfg.MaxBufferBytes)
	}
	if cfg.SessionLinger == 0 {
		cfg.SessionLinger = DefaultSessionLinger
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	// A string of the protocol: valid UTF-8, at most 255 bytes, no
	// control characters (PROTOCOL.md §2).
	cfg.Name = wire.SanitizeReason(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, cfg.Name))
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if _, err := crypto.NewServer(cfg.Crypto); err != nil {
		return cfg, nil, err
	}
	cfg.counters = new(counters)
	return cfg, acl, nil
}
