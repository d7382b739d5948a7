package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// defaultListen is where dst export listens without --listen: every
// address, IPv6 and IPv4 (dual stack), on the DST port, as nbdkit listens
// on every address by default. The access list is mandatory, so this
// exposes nothing by itself. Hosts without IPv6 fall back to
// defaultListen4.
const (
	defaultListen  = "dst://[::]:10811"
	defaultListen4 = "dst://0.0.0.0:10811"
	// exportShutdownTimeout bounds the clean stop after SIGINT/SIGTERM.
	exportShutdownTimeout = 30 * time.Second
)

// multiFlag collects a repeatable flag's values as given: unlike
// cli.StringSliceFlag it does not split them on commas (--export takes
// NAME=PATH,ro). The flags using it have no aliases: urfave/cli copies an
// aliased flag's value to its other names through Set, which would add it
// twice.
type multiFlag []string

func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
func (m *multiFlag) String() string     { return strings.Join(*m, " ") }

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "serve local files and disks to dst clients (runs in the foreground)",
		ArgsUsage: " ",
		Description: "Serves each --export to dst clients (dst attach) over the DST protocol.\n\n" +
			"Without --listen it listens on every address, IPv6 and IPv4, port 10811\n" +
			"(" + defaultListen + "; " + defaultListen4 + " where IPv6 is off). Give --listen once per\n" +
			"address: dst://127.0.0.1:10811, dst://[::1]:10811, dst+unix:///run/dst.sock; port 0 picks\n" +
			"a free port. One line per listener is printed on stdout once it is ready:\n" +
			"\"listening URL\" with the real address.\n\n" +
			"--nbd-listen URL serves the same exports, with the same access list, to standard NBD\n" +
			"clients (nbdinfo, nbdcopy, qemu, fio, nbd-client): nbd://0.0.0.0:10809, nbd://[::]:10809,\n" +
			"nbd+unix:///?socket=/run/dst-nbd.sock. With only --nbd-listen there is no DST listener.\n\n" +
			"An access list is required: --allow CIDR=rw|ro for IP clients (the most specific\n" +
			"prefix wins), or --allow-all=rw|ro to admit everyone. Clients not on it are\n" +
			"disconnected before the handshake. Unix-socket clients are admitted by the socket\n" +
			"file's permissions (mode 0660) and get read-write unless --allow unix=ro.\n" +
			"A session is read-only if the export is (,ro), the client's rule is ro, or the\n" +
			"client asks for it.\n\n" +
			"Exports are opened with O_DIRECT; add ,buffered for filesystems without it.\n" +
			"SIGINT or SIGTERM stops it cleanly: in-flight requests finish and are answered,\n" +
			"clients are told GOODBYE (they reconnect elsewhere or later), the exports are\n" +
			"synced (at most 30s).\n\n" +
			"--config FILE reads the settings from a TOML file (docs/dst-export.example.toml);\n" +
			"the flags are applied on top: --listen, --export and --allow add to the file's lists,\n" +
			"--allow-all, --name, --max-inflight, --max-transfer and the crypto flags override it;\n" +
			"--nbd-listen adds to [nbd] listen, the --nbd-tls-* files replace its TLS files.\n" +
			"SIGHUP re-reads the file: the access list and the exports change without touching\n" +
			"the other exports' sessions (connections whose access is reduced are closed, a\n" +
			"removed export's connections are closed once their requests finish); other changes\n" +
			"need a restart (NBD certificate files are re-read). A file that does not load keeps\n" +
			"the running configuration.\n\n" +
			"NBD TLS client certificates: --nbd-tls-ca FILE verifies them, and --allow cert:NAME=rw|ro\n" +
			"admits a certificate whose subject CN or DNS name is NAME; clients without one are\n" +
			"judged by address unless --nbd-tls-require-client-cert.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "read the settings from the TOML `FILE` (the flags add to or override it; SIGHUP reloads it)"},
			metricsListenFlag(),
			&cli.GenericFlag{Name: "listen", Value: &multiFlag{},
				Usage: "listen on `URL` (repeatable; default " + defaultListen + ")"},
			&cli.GenericFlag{Name: "nbd-listen", Value: &multiFlag{},
				Usage: "also serve the exports to NBD clients on `URL`: nbd://HOST[:PORT] (port 10809 by default), nbd://[V6]:PORT, nbd+unix:///?socket=/PATH (repeatable)"},
			&cli.StringFlag{Name: "nbd-tls-cert", Usage: "offer TLS (STARTTLS) to NBD clients with the PEM certificate (chain) in `FILE`"},
			&cli.StringFlag{Name: "nbd-tls-key", Usage: "the PEM private key of --nbd-tls-cert, in `FILE`"},
			&cli.BoolFlag{Name: "nbd-tls-require", Usage: "refuse NBD clients that do not start TLS (needs --nbd-tls-cert)"},
			&cli.StringFlag{Name: "nbd-tls-ca", Usage: "verify NBD client certificates against the PEM CA certificates in `FILE`; --allow cert:NAME=rw|ro then grants access by the certificate's CN or DNS name (needs --nbd-tls-cert)"},
			&cli.BoolFlag{Name: "nbd-tls-require-client-cert", Usage: "refuse NBD clients without a certificate that verifies against --nbd-tls-ca"},
			&cli.GenericFlag{Name: "export", Value: &multiFlag{},
				Usage: "serve `NAME=PATH[,ro][,buffered]`: the file or block device PATH as export NAME; ro: read-only, buffered: no O_DIRECT (repeatable; at least one, here or in --config)"},
			&cli.GenericFlag{Name: "allow", Value: &multiFlag{},
				Usage: "admit `CIDR=rw|ro`: clients in CIDR (an address alone is /32 or /128) read-write or read-only; unix=rw|ro for Unix-socket clients (repeatable)"},
			&cli.StringFlag{Name: "allow-all", Usage: "admit every client no --allow rule matches, `rw|ro`"},
			&cli.UintFlag{Name: "max-inflight", Value: wire.DefaultMaxInflight,
				Usage: "`N` requests a connection may have outstanding (1..65536)"},
			&cli.StringFlag{Name: "max-transfer", Value: "1MiB", Usage: "largest read or write, `SIZE` from 512B to 32MiB"},
			&cli.StringFlag{Name: "name", Usage: "exporter `NAME` shown to clients (default: the host name)"},
		}, append(cryptoFlags(), exportFaultFlags()...)...),
		Action: runExport,
	}
}

// exportConfig turns the command line into an export.Config, checking
// everything that can be checked without opening files.
func exportConfig(c *cli.Context) (export.Config, []string, error) {
	cfg, listens, _, err := exportConfigNBD(c)
	return cfg, listens, err
}

// nbdSettings are the NBD listeners and their TLS files, from --config's
// [nbd] table and the --nbd-* flags.
type nbdSettings struct {
	listens       []*transport.URL
	cert, key, ca string // PEM files; all empty: no TLS
	require       bool   // --nbd-tls-require
	requireClient bool   // --nbd-tls-require-client-cert
}

// listenStrings are the NBD listen URLs as given (for comparisons).
func (n nbdSettings) listenStrings() []string {
	out := make([]string, len(n.listens))
	for i, u := range n.listens {
		out[i] = export.NBDURL(u)
	}
	return out
}

// check reports the combinations that make no sense; flag names the
// source of the setting in the message (the flag, or the file's key).
func (n nbdSettings) check() error {
	switch {
	case (n.cert == "") != (n.key == ""):
		return errors.New("--nbd-tls-cert and --nbd-tls-key (nbd.tls_cert, nbd.tls_key) go together")
	case n.cert == "" && n.require:
		return errors.New("--nbd-tls-require (nbd.tls_require) needs --nbd-tls-cert and --nbd-tls-key")
	case n.cert == "" && n.ca != "":
		return errors.New("--nbd-tls-ca (nbd.tls_ca) needs --nbd-tls-cert and --nbd-tls-key: client certificates are verified during TLS")
	case n.ca == "" && n.requireClient:
		return errors.New("--nbd-tls-require-client-cert (nbd.tls_require_client_cert) needs --nbd-tls-ca")
	}
	return nil
}

// tlsConfig loads the TLS files: nil without TLS.
func (n nbdSettings) tlsConfig() (*tls.Config, error) {
	if n.cert == "" {
		return nil, nil
	}
	kp, err := tls.LoadX509KeyPair(n.cert, n.key)
	if err != nil {
		return nil, fmt.Errorf("--nbd-tls-cert %s, --nbd-tls-key %s: %w", n.cert, n.key, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	if n.ca != "" {
		b, err := os.ReadFile(n.ca)
		if err != nil {
			return nil, fmt.Errorf("--nbd-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--nbd-tls-ca %s: no PEM certificate in it", n.ca)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if n.requireClient {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return cfg, nil
}

// exportConfigNBD is exportConfig with the NBD settings: the file's [nbd]
// table under the --nbd-* flags (--nbd-listen adds to nbd.listen; any of
// --nbd-tls-cert, --nbd-tls-key, --nbd-tls-ca replaces the file's TLS
// files as a group; the two booleans override when given).
func exportConfigNBD(c *cli.Context) (export.Config, []string, nbdSettings, error) {
	var n nbdSettings
	cfg, listens, file, err := exportConfigDST(c)
	if err != nil {
		return cfg, nil, n, err
	}
	if file != nil {
		n = file.nbd
		n.listens = slices.Clone(n.listens)
	}
	for _, s := range *c.Generic("nbd-listen").(*multiFlag) {
		u, err := export.ParseNBDListenURL(s)
		if err != nil {
			return cfg, nil, n, usagef("--nbd-listen: %v", err)
		}
		n.listens = append(n.listens, u)
	}
	if c.IsSet("nbd-tls-cert") || c.IsSet("nbd-tls-key") || c.IsSet("nbd-tls-ca") {
		n.cert, n.key, n.ca = c.String("nbd-tls-cert"), c.String("nbd-tls-key"), c.String("nbd-tls-ca")
	}
	if c.IsSet("nbd-tls-require") {
		n.require = c.Bool("nbd-tls-require")
	}
	if c.IsSet("nbd-tls-require-client-cert") {
		n.requireClient = c.Bool("nbd-tls-require-client-cert")
	}
	if err := n.check(); err != nil {
		return cfg, nil, n, usageError{err}
	}
	return cfg, listens, n, nil
}

// exportConfigDST reads everything but the NBD settings, and returns the
// loaded --config file (nil without one).
func exportConfigDST(c *cli.Context) (cfg export.Config, _ []string, file *exportFile, _ error) {
	if c.NArg() > 0 {
		return cfg, nil, nil, usagef("export takes no arguments (got %q): use --export NAME=PATH", c.Args().First())
	}
	// file (--config) is the base the flags add to or override.
	if p := c.String("config"); p != "" {
		var err error
		if file, err = loadExportFile(p); err != nil {
			return cfg, nil, nil, err
		}
	}
	exports := *c.Generic("export").(*multiFlag)
	if len(exports) == 0 && (file == nil || len(file.exports) == 0) {
		return cfg, nil, nil, usagef("nothing to export: add --export NAME=PATH[,ro][,buffered] (or [[export]] in --config)")
	}
	seen := map[string]bool{}
	for _, s := range exports {
		e, err := parseExport(s)
		if err != nil {
			return cfg, nil, nil, usagef("--export %s: %v", s, err)
		}
		if seen[e.Name] {
			return cfg, nil, nil, usagef("--export %s: export %q is given twice", s, e.Name)
		}
		seen[e.Name] = true
		cfg.Exports = append(cfg.Exports, e)
	}
	for _, s := range *c.Generic("allow").(*multiFlag) {
		r, err := export.ParseRule(s)
		if err != nil {
			return cfg, nil, nil, usagef("--allow: %v", err)
		}
		cfg.Access.Rules = append(cfg.Access.Rules, r)
	}
	if s := c.String("allow-all"); c.IsSet("allow-all") {
		a, err := export.ParseAccess(s)
		if err != nil {
			return cfg, nil, nil, usagef("--allow-all: %v", err)
		}
		cfg.Access.AllowAll = a
	}
	listens := []string(*c.Generic("listen").(*multiFlag))
	if file != nil {
		if err := mergeExportFile(file, &cfg, &listens, c.IsSet); err != nil {
			return cfg, nil, nil, err
		}
	}
	if len(cfg.Access.Rules) == 0 && cfg.Access.AllowAll == export.Deny {
		return cfg, nil, nil, usageError{export.ErrNoACL}
	}
	mi := c.Uint("max-inflight")
	if mi < 1 || mi > wire.MaxInflightLimit {
		return cfg, nil, nil, usagef("--max-inflight %d out of range: need 1..%d", mi, wire.MaxInflightLimit)
	}
	if file == nil || file.maxInflight == 0 || c.IsSet("max-inflight") {
		cfg.MaxInflight = uint32(mi)
	}
	mt, err := parseSize(c.String("max-transfer"))
	if err != nil {
		return cfg, nil, nil, usagef("--max-transfer: %v", err)
	}
	if mt < 512 || mt > wire.MaxTransferLimit || mt%512 != 0 {
		return cfg, nil, nil, usagef("--max-transfer %s: need a multiple of 512 bytes from 512B to 32MiB", c.String("max-transfer"))
	}
	if file == nil || file.maxTransfer == 0 || c.IsSet("max-transfer") {
		cfg.MaxTransfer = uint32(mt)
	}
	if n := c.String("name"); n != "" {
		if len(n) > wire.MaxNameLen {
			return cfg, nil, nil, usagef("--name is %d bytes, at most %d", len(n), wire.MaxNameLen)
		}
		cfg.Name = n
	}

	if file == nil || file.crypto == nil || c.IsSet("checksum") || c.IsSet("cipher") || c.IsSet("key-file") {
		if cfg.Crypto, err = cryptoConfig(c); err != nil { // for every export and client (PROTOCOL.md §8)
			return cfg, nil, nil, err
		}
	}
	if file != nil && file.workers >= 0 && !c.IsSet("crypto-workers") {
		if cfg.CryptoWorkers, err = checkCryptoWorkers(file.path+": crypto_workers", file.workers, cfg.Crypto.Suite); err != nil {
			return cfg, nil, nil, err
		}
	} else if cfg.CryptoWorkers, err = cryptoWorkers(c, cfg.Crypto.Suite); err != nil {
		return cfg, nil, nil, err
	}
	if err := applyExportFaults(c, &cfg); err != nil {
		return cfg, nil, nil, err
	}
	for i, s := range listens {
		u, err := transport.ParseURL(s)
		if err != nil {
			return cfg, nil, nil, usagef("--listen: %v", err)
		}
		if u.Export != "" {
			return cfg, nil, nil, usagef("--listen %s: a listen URL names no export (exports are given with --export)", s)
		}
		for _, prev := range listens[:i] {
			// Port 0 listeners are distinct: each gets its own port.
			if p, _ := transport.ParseURL(prev); p != nil && p.String() == u.String() && !strings.HasSuffix(u.Address, ":0") {
				return cfg, nil, nil, usagef("--listen %s is given twice", s)
			}
		}
	}
	return cfg, listens, file, nil
}

// parseExport reads NAME=PATH[,ro][,buffered]. PATH cannot contain commas.
func parseExport(s string) (export.ExportConfig, error) {
	var e export.ExportConfig
	name, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return e, errors.New("want NAME=PATH[,ro][,buffered]")
	}
	if err := wire.ValidExportName(name); err != nil {
		var he *wire.HandshakeError
		if errors.As(err, &he) {
			return e, fmt.Errorf("bad export name: %s", he.Reason)
		}
		return e, err
	}
	parts := strings.Split(rest, ",")
	e.Name, e.Path = name, parts[0]
	if e.Path == "" {
		return e, errors.New("empty path")
	}
	for _, o := range parts[1:] {
		switch o {
		case "ro":
			e.ReadOnly = true
		case "buffered":
			e.Buffered = true
		default:
			return e, fmt.Errorf("unknown option %q (known: ro, buffered)", o)
		}
	}
	return e, nil
}

func runExport(c *cli.Context) error {
	cfg, listens, nbdSet, err := exportConfigNBD(c)
	if err != nil {
		return err
	}
	nbdURLs := nbdSet.listens
	tlsCfg, err := nbdSet.tlsConfig()
	if err != nil {
		return err
	}
	// Read per NBD connection, so that a reload can replace the
	// certificates (exportReloader.applyNBD).
	nbdTLS := new(atomic.Pointer[tls.Config])
	nbdTLS.Store(tlsCfg)
	nbdOpts := export.NBDOptions{GetTLS: nbdTLS.Load, RequireTLS: nbdSet.require}
	if err := checkMetricsAddr(c.String("metrics-listen")); err != nil {
		return err
	}
	ml, err := listenMetrics(c.String("metrics-listen"))
	if err != nil {
		return err
	}
	cfg.Log = log
	if cfg.CryptoPool = newCryptoPool(cfg.CryptoWorkers); cfg.CryptoPool != nil {
		defer cfg.CryptoPool.Close() // after the server has shut down
	}
	srv, err := export.New(cfg)
	if err != nil {
		if ml != nil {
			ml.Close()
		}
		return err
	}
	reloader := &exportReloader{srv: srv, cfg: cfg, listens: slices.Clone(listens), nbd: nbdSet, nbdTLS: nbdTLS}
	defaulted := len(listens) == 0 && len(nbdURLs) == 0
	if defaulted {
		listens = []string{defaultListen}
	}
	var (
		lns   []net.Listener
		bound []string
	)
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
		if ml != nil {
			ml.Close()
		}
		srv.Close()
	}
	for _, s := range listens {
		l, u, err := transport.Listen(c.Context, s, transport.Options{})
		if err != nil && defaulted && (errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)) {
			log.Info("no IPv6: listening on IPv4 only", zap.Error(err))
			l, u, err = transport.Listen(c.Context, defaultListen4, transport.Options{})
		}
		if err != nil {
			closeAll()
			return err
		}
		lns = append(lns, l)
		bound = append(bound, u.String())
	}
	nDST := len(lns)
	for _, nu := range nbdURLs {
		l, err := transport.ListenURL(c.Context, nu, transport.Options{})
		if err != nil {
			closeAll()
			return fmt.Errorf("--nbd-listen %s: %w", export.NBDURL(nu), err)
		}
		lns = append(lns, l)
		bu := *nu
		bu.Address = l.Addr().String()
		bound = append(bound, export.NBDURL(&bu))
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	serveErr := make(chan error, len(lns))
	for i, l := range lns {
		if i < nDST {
			go func() { serveErr <- srv.Serve(context.Background(), l) }()
		} else {
			go func() { serveErr <- srv.ServeNBDWith(context.Background(), l, nbdOpts) }()
		}
	}
	if ml != nil {
		stop, err := serveExportMetrics(srv, ml)
		if err != nil {
			closeAll()
			return err
		}
		defer stop()
	}
	for _, u := range bound {
		fmt.Printf("listening %s\n", u)
	}
	log.Info("exporter ready", zap.Strings("listen", bound), zap.Int("exports", len(cfg.Exports)))

	var runErr error
	pending := len(lns)
wait:
	for {
		select {
		case s := <-sigs:
			log.Info("stopping exporter", zap.String("signal", s.String()))
			break wait
		case err := <-serveErr:
			pending--
			runErr = err
			log.Error("listener failed; stopping exporter", zap.Error(err))
			break wait
		case <-hup:
			reloadExport(c, reloader)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), exportShutdownTimeout)
	watched := make(chan struct{})
	go func() { // a second signal: stop waiting for clients
		defer close(watched)
		select {
		case s := <-sigs:
			log.Warn("second signal: closing connections now", zap.String("signal", s.String()))
			cancel()
		case <-ctx.Done():
		}
	}()
	err = srv.Shutdown(ctx)
	late := ctx.Err() != nil
	cancel()
	<-watched
	if err != nil {
		runErr = errors.Join(runErr, err)
	}
	for ; pending > 0; pending-- {
		if err := <-serveErr; err != nil && !errors.Is(err, export.ErrServerClosed) && runErr == nil {
			runErr = err
		}
	}
	if late {
		log.Warn("shutdown did not finish in time: some connections were closed without GOODBYE")
	}
	return runErr
}
