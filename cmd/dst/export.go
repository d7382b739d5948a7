package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
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
			"--allow-all, --name, --max-inflight, --max-transfer and the crypto flags override it.\n" +
			"SIGHUP re-reads the file: the access list and the exports change without touching\n" +
			"the other exports' sessions (connections whose access is reduced are closed, a\n" +
			"removed export's connections are closed once their requests finish); other changes\n" +
			"need a restart. A file that does not load keeps the running configuration.",
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

// nbdOptions reads --nbd-tls-cert, --nbd-tls-key and --nbd-tls-require.
func nbdOptions(c *cli.Context) (export.NBDOptions, error) {
	var o export.NBDOptions
	cert, key := c.String("nbd-tls-cert"), c.String("nbd-tls-key")
	switch {
	case (cert == "") != (key == ""):
		return o, usagef("--nbd-tls-cert and --nbd-tls-key go together")
	case cert == "" && c.Bool("nbd-tls-require"):
		return o, usagef("--nbd-tls-require needs --nbd-tls-cert and --nbd-tls-key")
	case cert == "":
		return o, nil
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return o, fmt.Errorf("--nbd-tls-cert %s, --nbd-tls-key %s: %w", cert, key, err)
	}
	o.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	o.RequireTLS = c.Bool("nbd-tls-require")
	return o, nil
}

// exportConfigNBD is exportConfig with the --nbd-listen URLs, parsed.
func exportConfigNBD(c *cli.Context) (export.Config, []string, []*transport.URL, error) {
	cfg, listens, err := exportConfigDST(c)
	if err != nil {
		return cfg, nil, nil, err
	}
	var nbdURLs []*transport.URL
	for _, s := range *c.Generic("nbd-listen").(*multiFlag) {
		u, err := export.ParseNBDListenURL(s)
		if err != nil {
			return cfg, nil, nil, usagef("--nbd-listen: %v", err)
		}
		nbdURLs = append(nbdURLs, u)
	}
	return cfg, listens, nbdURLs, nil
}

func exportConfigDST(c *cli.Context) (export.Config, []string, error) {
	var cfg export.Config
	if c.NArg() > 0 {
		return cfg, nil, usagef("export takes no arguments (got %q): use --export NAME=PATH", c.Args().First())
	}
	var file *exportFile // --config: the base the flags add to or override
	if p := c.String("config"); p != "" {
		var err error
		if file, err = loadExportFile(p); err != nil {
			return cfg, nil, err
		}
	}
	exports := *c.Generic("export").(*multiFlag)
	if len(exports) == 0 && (file == nil || len(file.exports) == 0) {
		return cfg, nil, usagef("nothing to export: add --export NAME=PATH[,ro][,buffered] (or [[export]] in --config)")
	}
	seen := map[string]bool{}
	for _, s := range exports {
		e, err := parseExport(s)
		if err != nil {
			return cfg, nil, usagef("--export %s: %v", s, err)
		}
		if seen[e.Name] {
			return cfg, nil, usagef("--export %s: export %q is given twice", s, e.Name)
		}
		seen[e.Name] = true
		cfg.Exports = append(cfg.Exports, e)
	}
	for _, s := range *c.Generic("allow").(*multiFlag) {
		r, err := export.ParseRule(s)
		if err != nil {
			return cfg, nil, usagef("--allow: %v", err)
		}
		cfg.Access.Rules = append(cfg.Access.Rules, r)
	}
	if s := c.String("allow-all"); c.IsSet("allow-all") {
		a, err := export.ParseAccess(s)
		if err != nil {
			return cfg, nil, usagef("--allow-all: %v", err)
		}
		cfg.Access.AllowAll = a
	}
	listens := []string(*c.Generic("listen").(*multiFlag))
	if file != nil {
		if err := mergeExportFile(file, &cfg, &listens, c.IsSet); err != nil {
			return cfg, nil, err
		}
	}
	if len(cfg.Access.Rules) == 0 && cfg.Access.AllowAll == export.Deny {
		return cfg, nil, usageError{export.ErrNoACL}
	}
	mi := c.Uint("max-inflight")
	if mi < 1 || mi > wire.MaxInflightLimit {
		return cfg, nil, usagef("--max-inflight %d out of range: need 1..%d", mi, wire.MaxInflightLimit)
	}
	if file == nil || file.maxInflight == 0 || c.IsSet("max-inflight") {
		cfg.MaxInflight = uint32(mi)
	}
	mt, err := parseSize(c.String("max-transfer"))
	if err != nil {
		return cfg, nil, usagef("--max-transfer: %v", err)
	}
	if mt < 512 || mt > wire.MaxTransferLimit || mt%512 != 0 {
		return cfg, nil, usagef("--max-transfer %s: need a multiple of 512 bytes from 512B to 32MiB", c.String("max-transfer"))
	}
	if file == nil || file.maxTransfer == 0 || c.IsSet("max-transfer") {
		cfg.MaxTransfer = uint32(mt)
	}
	if n := c.String("name"); n != "" {
		if len(n) > wire.MaxNameLen {
			return cfg, nil, usagef("--name is %d bytes, at most %d", len(n), wire.MaxNameLen)
		}
		cfg.Name = n
	}

	if file == nil || file.crypto == nil || c.IsSet("checksum") || c.IsSet("cipher") || c.IsSet("key-file") {
		if cfg.Crypto, err = cryptoConfig(c); err != nil { // for every export and client (PROTOCOL.md §8)
			return cfg, nil, err
		}
	}
	if _, err := cryptoWorkers(c, cfg.Crypto.Suite); err != nil {
		return cfg, nil, err
	}
	if err := applyExportFaults(c, &cfg); err != nil {
		return cfg, nil, err
	}
	for i, s := range listens {
		u, err := transport.ParseURL(s)
		if err != nil {
			return cfg, nil, usagef("--listen: %v", err)
		}
		if u.Export != "" {
			return cfg, nil, usagef("--listen %s: a listen URL names no export (exports are given with --export)", s)
		}
		for _, prev := range listens[:i] {
			// Port 0 listeners are distinct: each gets its own port.
			if p, _ := transport.ParseURL(prev); p != nil && p.String() == u.String() && !strings.HasSuffix(u.Address, ":0") {
				return cfg, nil, usagef("--listen %s is given twice", s)
			}
		}
	}
	return cfg, listens, nil
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
	cfg, listens, nbdURLs, err := exportConfigNBD(c)
	if err != nil {
		return err
	}
	nbdOpts, err := nbdOptions(c)
	if err != nil {
		return err
	}
	if err := checkMetricsAddr(c.String("metrics-listen")); err != nil {
		return err
	}
	ml, err := listenMetrics(c.String("metrics-listen"))
	if err != nil {
		return err
	}
	cfg.Log = log
	if cfg.CryptoPool = newCryptoPool(c.Int("crypto-workers")); cfg.CryptoPool != nil {
		defer cfg.CryptoPool.Close() // after the server has shut down
	}
	srv, err := export.New(cfg)
	if err != nil {
		if ml != nil {
			ml.Close()
		}
		return err
	}
	reloader := &exportReloader{srv: srv, cfg: cfg, listens: slices.Clone(listens)}
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
