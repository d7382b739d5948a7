package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/state"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/txn"
	"github.com/dst-dev/dst/ublk"
)

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "create a ublk device backed by a remote export (runs in the foreground)",
		ArgsUsage: "URL",
		Description: "URL is dst://host[:port]/export, dst://[v6addr]:port/export or\n" +
			"dst+unix:///path/to.sock?export=name for a DST exporter, or nbd://host[:port]/export\n" +
			"or nbd+unix:///export?socket=/path for any NBD server (nbdkit, qemu-nbd, nbd-server,\n" +
			"dst export --nbd-listen; one connection per queue when the server allows multi-conn).\n" +
			"The device survives short outages:\n" +
			"a request without an answer is resent every --timeout, --retries times,\n" +
			"then fails with EIO; lost connections are re-established and unanswered\n" +
			"requests resent; an idle link is probed every --ping.\n\n" +
			"--checksum or --cipher (with --key-file) protect every frame; the exporter must\n" +
			"be started with the same ones, or the connection is refused at the handshake.",
		Flags: append(append(deviceFlags(), cryptoFlags()...),
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "resend a request after this long without an answer"},
			&cli.IntFlag{Name: "retries", Value: 6, Usage: "resends before a request fails with EIO (0 = fail at the first timeout)"},
			&cli.DurationFlag{Name: "ping", Value: 2 * time.Second, Usage: "probe an idle connection this often; dead after two silent intervals"},
			&cli.BoolFlag{Name: "ro", Usage: "attach read-only"},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("attach needs exactly one URL, e.g. dst attach dst://server/disk0")
			}
			o, err := deviceOptions(c)
			if err != nil {
				return err
			}
			if c.Duration("timeout") <= 0 {
				return usagef("--timeout must be positive")
			}
			if c.Int("retries") < 0 || c.Int("retries") > 1000 {
				return usagef("--retries %d out of range: need 0..1000", c.Int("retries"))
			}
			if c.Duration("ping") <= 0 {
				return usagef("--ping must be positive")
			}
			cc, err := cryptoConfig(c)
			if err != nil {
				return err
			}
			workers, err := cryptoWorkers(c, cc.Suite)
			if err != nil {
				return err
			}
			rawURL := c.Args().First()
			var u fmt.Stringer
			isNBD := nbd.IsURL(rawURL)
			if isNBD {
				nu, err := nbd.ParseURL(rawURL)
				if err != nil {
					return usageError{err}
				}
				if cc.Suite != 0 {
					return usagef("--checksum and --cipher are DST protocol features that NBD servers do not speak: drop them, or attach a dst:// URL")
				}
				u = nu
			} else {
				tu, err := transport.ParseURL(rawURL)
				if err != nil {
					return usageError{err}
				}
				if tu.Export == "" {
					return usagef("URL %s names no export: add /EXPORT (or ?export=NAME for unix sockets)", rawURL)
				}
				u = tu
			}
			if err := requireRoot(); err != nil {
				return err
			}
			// Fail on a missing driver before talking to the network.
			ctrl, err := ublk.OpenControl()
			if err != nil {
				return err
			}
			ctrl.Close()

			k := newRecordKeeper(recordOptions(c, state.Record{Kind: "remote", URL: u.String(), ReadOnly: c.Bool("ro"),
				Remote: &state.Remote{Timeout: c.Duration("timeout").String(), Retries: c.Int("retries"), Ping: c.Duration("ping").String(),
					Checksum: c.String("checksum"), Cipher: c.String("cipher"), KeyFile: absPath(c.String("key-file")), CryptoWorkers: workers}}))
			ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
			opts := remoteOptions(rawURL, c.Duration("timeout"), c.Int("retries"), c.Duration("ping"), o.Depth, c.Bool("ro"), k)
			opts.Crypto = cc
			if opts.CryptoPool = newCryptoPool(workers); opts.CryptoPool != nil {
				defer opts.CryptoPool.Close() // after the queues are gone
			}
			target, err := txn.DialTarget(ctx, opts)
			cancel()
			if err != nil {
				return fmt.Errorf("attach %s: %w", u, err)
			}
			if ok, flags := target.NBD(); ok && flags&nbd.FlagCanMultiConn == 0 && o.Queues > 1 {
				// Without multi-conn a flush on one connection need not
				// cover writes completed on another, and each queue has
				// its own connection.
				if c.IsSet("queues") {
					target.Close()
					return usagef("--queues %d: the NBD server does not announce CAN_MULTI_CONN, so the device can use one connection only: use --queues 1", o.Queues)
				}
				log.Info("the NBD server does not announce CAN_MULTI_CONN: one queue, one connection", zap.Stringer("url", u))
				o.Queues = 1
			}
			w := target.Welcome()
			log.Info("connected", zap.Stringer("url", u), zap.Stringer("crypto", cc.Suite), zap.Uint64("size", w.Size),
				zap.Uint32("block", w.LogicalBlock), zap.Bool("read_only", w.ReadOnly), zap.Stringer("features", w.Features))
			k.update(func(r *state.Record) { r.Conn = "up" })
			// Each queue detaches its own connection (DISCONNECT) when the
			// device stops.
			err = serveDevice(c.Context, target, o, k)
			st := target.Stats()
			log.Info("detached", zap.Uint64("requests", st.Completed), zap.Uint64("failed", st.Failed),
				zap.Uint64("resent", st.Resent), zap.Uint64("reconnects", st.Reconnects))
			return err
		},
	}
}

// absPath makes a key file path absolute for the state record (dst
// recover may run elsewhere); "" stays "".
func absPath(p string) string {
	if p == "" {
		return ""
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// remoteOptions are the connection options of a remote device; the state
// record follows the connection state and the queues' session tokens.
func remoteOptions(url string, timeout time.Duration, retries int, ping time.Duration, depth int, ro bool, k *recordKeeper) txn.Options {
	return txn.Options{
		URL:      url,
		Timeout:  timeout,
		Retries:  retries,
		Ping:     ping,
		Capacity: 2 * depth,
		ReadOnly: ro,
		Log:      log.Named("txn"),
		OnState: func(s txn.ConnState) {
			k.update(func(r *state.Record) { r.Conn = s.String() })
		},
		// Written before any request goes out on the session: a daemon
		// that dies after this point leaves a record that resumes it.
		OnSession: func(queue int, tok wire.Token) { k.setSession(queue, tok) },
	}
}
