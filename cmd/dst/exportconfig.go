package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// dst export --config FILE
//
// The file is TOML; docs/dst-export.example.toml documents every key (and
// TestExampleConfig loads it, so that it cannot rot). Its settings are the
// base; the command line is applied on top of them:
//
//   - lists add: --listen, --export and --allow come after the file's
//     listen, [[export]] and access.allow (an export name or a prefix in
//     both is an error, as it is twice on the command line);
//   - single values override: --allow-all, --name, --max-inflight,
//     --max-transfer, --crypto-workers, and the crypto flags as a group (any of --checksum,
//     --cipher, --key-file replaces the whole [crypto] table).
//
// SIGHUP re-reads the file and applies the same flags again: the access
// list and the exports change (export.Server.SetAccess, AddExport,
// RemoveExport); the other settings need a restart, and a reload that
// changes them says so and keeps the running values. A file that does not
// load keeps the running configuration (the error is logged).
//
// Every mistake is reported with the file, the line and the key:
// "/etc/dst/export.toml:14: export[2].path: empty". Unknown keys are
// errors, not warnings: a misspelt "ro" must not serve a disk read-write.

// fileConfig is the file's schema.
type fileConfig struct {
	Name        string   `toml:"name"`
	Listen      []string `toml:"listen"`
	MaxInflight int64    `toml:"max_inflight"`
	MaxTransfer string   `toml:"max_transfer"`
	// CryptoWorkers is --crypto-workers: not in [crypto], which the
	// crypto flags replace as a group, since it overrides alone.
	CryptoWorkers int `toml:"crypto_workers"`
	Access        struct {
		Allow    []string `toml:"allow"`
		AllowAll string   `toml:"allow_all"`
	} `toml:"access"`
	Crypto struct {
		Checksum string `toml:"checksum"`
		Cipher   string `toml:"cipher"`
		KeyFile  string `toml:"key_file"`
	} `toml:"crypto"`
	NBD struct {
		Listen               []string `toml:"listen"`
		TLSCert              string   `toml:"tls_cert"`
		TLSKey               string   `toml:"tls_key"`
		TLSCA                string   `toml:"tls_ca"`
		TLSRequire           bool     `toml:"tls_require"`
		TLSRequireClientCert bool     `toml:"tls_require_client_cert"`
	} `toml:"nbd"`
	Exports []struct {
		Name     string `toml:"name"`
		Path     string `toml:"path"`
		RO       bool   `toml:"ro"`
		Buffered bool   `toml:"buffered"`
	} `toml:"export"`
}

// exportFile is a loaded and checked configuration file. Zero values are
// settings the file does not give.
type exportFile struct {
	path        string
	name        string
	listens     []string
	maxInflight uint32
	maxTransfer uint32
	rules       []export.Rule
	allowAll    export.Access
	crypto      *crypto.Config // nil: no [crypto] table
	workers     int            // crypto_workers; -1: not given
	nbd         nbdSettings    // the [nbd] table (zero: none)
	exports     []export.ExportConfig
}

// configError is a mistake in the configuration file (exit status 2, as
// for the command line).
func configError(path string, line int, key, format string, a ...any) error {
	where := path
	if line > 0 {
		where = fmt.Sprintf("%s:%d", path, line)
	}
	if key != "" {
		where += ": " + key
	}
	return usageError{fmt.Errorf("%s: %s", where, fmt.Sprintf(format, a...))}
}

// loadExportFile reads and checks the configuration file at path. It does
// not open the exports (export.New does); it loads the key file.
func loadExportFile(path string) (*exportFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError{fmt.Errorf("--config: %w", err)}
	}
	var fc fileConfig
	md, err := toml.Decode(string(data), &fc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, configError(path, pe.Position.Line, pe.LastKey, "%s", pe.Message)
		}
		// Type mismatches: "toml: line N (last key K): ...".
		return nil, usageError{fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "toml: "))}
	}
	lines := scanKeys(data)
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, configError(path, lines.find(k), k.String(), "unknown key (see docs/dst-export.example.toml for the keys)")
	}
	f := &exportFile{path: path, name: fc.Name, workers: -1}
	line := func(k ...string) int { return lines.find(toml.Key(k)) }

	if len(f.name) > wire.MaxNameLen {
		return nil, configError(path, line("name"), "name", "%d bytes, at most %d", len(f.name), wire.MaxNameLen)
	}
	for i, s := range fc.Listen {
		u, err := transport.ParseURL(s)
		if err != nil {
			return nil, configError(path, line("listen"), fmt.Sprintf("listen[%d]", i), "%v", err)
		}
		if u.Export != "" {
			return nil, configError(path, line("listen"), fmt.Sprintf("listen[%d]", i), "%s: a listen URL names no export", s)
		}
		f.listens = append(f.listens, s)
	}
	if md.IsDefined("max_inflight") {
		if fc.MaxInflight < 1 || fc.MaxInflight > wire.MaxInflightLimit {
			return nil, configError(path, line("max_inflight"), "max_inflight", "%d out of range: need 1..%d", fc.MaxInflight, wire.MaxInflightLimit)
		}
		f.maxInflight = uint32(fc.MaxInflight)
	}
	if md.IsDefined("max_transfer") {
		mt, err := checkMaxTransfer(fc.MaxTransfer)
		if err != nil {
			return nil, configError(path, line("max_transfer"), "max_transfer", "%v", err)
		}
		f.maxTransfer = mt
	}
	if md.IsDefined("crypto_workers") {
		if n := fc.CryptoWorkers; n < 0 || n > maxCryptoWorkers {
			return nil, configError(path, line("crypto_workers"), "crypto_workers", "%d out of range: need 0..%d (0: inline)", n, maxCryptoWorkers)
		}
		f.workers = fc.CryptoWorkers
	}
	for i, s := range fc.Access.Allow {
		r, err := export.ParseRule(s)
		if err != nil {
			return nil, configError(path, line("access", "allow"), fmt.Sprintf("access.allow[%d]", i), "%v", err)
		}
		f.rules = append(f.rules, r)
	}
	if md.IsDefined("access", "allow_all") {
		a, err := export.ParseAccess(fc.Access.AllowAll)
		if err != nil {
			return nil, configError(path, line("access", "allow_all"), "access.allow_all", "%v", err)
		}
		f.allowAll = a
	}
	if md.IsDefined("crypto") {
		cc := fc.Crypto
		s, err := crypto.SuiteFromFlags(cc.Checksum, cc.Cipher)
		if err != nil {
			return nil, configError(path, line("crypto"), "crypto", "%v", err)
		}
		cfg := crypto.Config{Suite: s}
		switch {
		case s.Keyed() && cc.KeyFile == "":
			return nil, configError(path, line("crypto", "cipher"), "crypto.key_file", "required with cipher %s (create a key with: dst keygen FILE)", s)
		case !s.Keyed() && cc.KeyFile != "":
			return nil, configError(path, line("crypto", "key_file"), "crypto.key_file", "only used with a cipher")
		case cc.KeyFile != "":
			k, err := crypto.LoadKeyFile(cc.KeyFile)
			if err != nil {
				return nil, configError(path, line("crypto", "key_file"), "crypto.key_file", "%v", err)
			}
			cfg.Key = k
		}
		f.crypto = &cfg
	}
	for i, s := range fc.NBD.Listen {
		u, err := export.ParseNBDListenURL(s)
		if err != nil {
			return nil, configError(path, line("nbd", "listen"), fmt.Sprintf("nbd.listen[%d]", i), "%v", err)
		}
		f.nbd.listens = append(f.nbd.listens, u)
	}
	f.nbd.cert, f.nbd.key, f.nbd.ca = fc.NBD.TLSCert, fc.NBD.TLSKey, fc.NBD.TLSCA
	f.nbd.require, f.nbd.requireClient = fc.NBD.TLSRequire, fc.NBD.TLSRequireClientCert
	if err := f.nbd.check(); err != nil {
		return nil, configError(path, line("nbd"), "nbd", "%v", err)
	}
	if f.nbd.cert != "" {
		// Loaded here too, so that a reload with broken files fails as
		// a whole and keeps the running configuration.
		if _, err := f.nbd.tlsConfig(); err != nil {
			return nil, configError(path, line("nbd", "tls_cert"), "nbd", "%v", err)
		}
	}
	seen := map[string]bool{}
	for i, e := range fc.Exports {
		key := fmt.Sprintf("export[%d]", i+1)
		at := lines.findIn("export", i, "name")
		ec := export.ExportConfig{Name: e.Name, Path: e.Path, ReadOnly: e.RO, Buffered: e.Buffered}
		if err := checkExportName(ec.Name); err != nil {
			return nil, configError(path, at, key+".name", "%v", err)
		}
		if seen[ec.Name] {
			return nil, configError(path, at, key+".name", "export %q is given twice", ec.Name)
		}
		seen[ec.Name] = true
		if ec.Path == "" {
			at := lines.findIn("export", i, "path")
			if at == 0 {
				at = lines.table("export", i)
			}
			return nil, configError(path, at, key+".path", "missing: the file or block device to serve")
		}
		f.exports = append(f.exports, ec)
	}
	return f, nil
}

// checkMaxTransfer reads a --max-transfer / max_transfer size.
func checkMaxTransfer(s string) (uint32, error) {
	mt, err := parseSize(s)
	if err != nil {
		return 0, err
	}
	if mt < 512 || mt > wire.MaxTransferLimit || mt%512 != 0 {
		return 0, fmt.Errorf("%s: need a multiple of 512 bytes from 512B to 32MiB", s)
	}
	return uint32(mt), nil
}

// checkExportName checks an export name as the protocol does.
func checkExportName(name string) error {
	if err := wire.ValidExportName(name); err != nil {
		var he *wire.HandshakeError
		if errors.As(err, &he) {
			return fmt.Errorf("bad export name %q: %s", name, he.Reason)
		}
		return err
	}
	return nil
}

// keyLines maps keys of a TOML file to the lines that set them, for
// error messages: a line scanner that follows [table] and [[array]]
// headers. It understands the forms the example uses (one key per line,
// bare keys); for anything else the messages go without a line.
type keyLines struct {
	keys   map[string]int // "table#index.key" or "key" -> first line
	tables map[string]int // "table#index" -> line of its header
}

var (
	reArray = regexp.MustCompile(`^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]`)
	reTable = regexp.MustCompile(`^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]`)
	reKey   = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=`)
)

func scanKeys(data []byte) keyLines {
	kl := keyLines{keys: map[string]int{}, tables: map[string]int{}}
	count := map[string]int{}
	table := ""
	for i, l := range bytes.Split(data, []byte("\n")) {
		n := i + 1
		if m := reArray.FindSubmatch(l); m != nil {
			name := string(m[1])
			table = fmt.Sprintf("%s#%d", name, count[name])
			count[name]++
			kl.tables[table] = n
			continue
		}
		if m := reTable.FindSubmatch(l); m != nil {
			table = string(m[1])
			kl.tables[table] = n
			continue
		}
		if m := reKey.FindSubmatch(l); m != nil {
			k := string(m[1])
			if table != "" {
				k = table + "." + k
			}
			if _, dup := kl.keys[k]; !dup {
				kl.keys[k] = n
			}
		}
	}
	return kl
}

// find returns the line of key k (a table's header for a table), or 0.
// A key inside an array of tables is looked up in the first one that has
// it.
func (kl keyLines) find(k toml.Key) int {
	if len(k) == 0 {
		return 0
	}
	if n, ok := kl.keys[strings.Join(k, ".")]; ok {
		return n
	}
	if n, ok := kl.tables[strings.Join(k, ".")]; ok {
		return n
	}
	if len(k) >= 2 {
		for i := 0; ; i++ {
			t := fmt.Sprintf("%s#%d", k[0], i)
			if _, ok := kl.tables[t]; !ok {
				break
			}
			if n, ok := kl.keys[t+"."+strings.Join(k[1:], ".")]; ok {
				return n
			}
		}
	}
	return 0
}

// findIn returns the line of key in the index-th [[table]], or 0.
func (kl keyLines) findIn(table string, index int, key string) int {
	return kl.keys[fmt.Sprintf("%s#%d.%s", table, index, key)]
}

// table returns the line of the index-th [[table]] header, or 0.
func (kl keyLines) table(table string, index int) int {
	return kl.tables[fmt.Sprintf("%s#%d", table, index)]
}

// mergeExportFile applies the file f under the command line's settings
// in cfg and listens (see the comment at the top): cfg holds what the
// flags gave, set tells which single-value flags were given.
func mergeExportFile(f *exportFile, cfg *export.Config, listens *[]string, set func(flag string) bool) error {
	for _, ec := range cfg.Exports {
		if slices.ContainsFunc(f.exports, func(x export.ExportConfig) bool { return x.Name == ec.Name }) {
			return usagef("--export %s: export %q is also in %s", ec.Name, ec.Name, f.path)
		}
	}
	cfg.Exports = append(slices.Clone(f.exports), cfg.Exports...)
	cfg.Access.Rules = append(slices.Clone(f.rules), cfg.Access.Rules...)
	if !set("allow-all") {
		cfg.Access.AllowAll = f.allowAll
	}
	*listens = append(slices.Clone(f.listens), *listens...)
	if f.name != "" && !set("name") {
		cfg.Name = f.name
	}
	if f.maxInflight != 0 && !set("max-inflight") {
		cfg.MaxInflight = f.maxInflight
	}
	if f.maxTransfer != 0 && !set("max-transfer") {
		cfg.MaxTransfer = f.maxTransfer
	}
	if f.crypto != nil && !set("checksum") && !set("cipher") && !set("key-file") {
		cfg.Crypto = *f.crypto
	}
	return nil
}

// exportReloader applies a reloaded configuration to a running server.
type exportReloader struct {
	srv     *export.Server
	cfg     export.Config // in effect
	listens []string
	nbd     nbdSettings                 // in effect
	nbdTLS  *atomic.Pointer[tls.Config] // what NBD connections use (nil in tests without NBD)
}

// applyNBD makes new NBD connections use next's TLS files (re-read even
// if their names did not change: a renewed certificate is picked up), and
// reports the NBD settings that need a restart: the listeners and the two
// requirements (kept as they run; the files are loaded under the running
// requirements, and a reload that would leave a TLS-requiring listener
// without a certificate is refused).
func (r *exportReloader) applyNBD(next nbdSettings) (restart []string, err error) {
	cur := r.nbd
	if !slices.Equal(next.listenStrings(), cur.listenStrings()) {
		restart = append(restart, "nbd.listen")
	}
	if next.require != cur.require {
		restart = append(restart, "nbd.tls_require")
	}
	if next.requireClient != cur.requireClient {
		restart = append(restart, "nbd.tls_require_client_cert")
	}
	if r.nbdTLS == nil {
		return restart, nil
	}
	files := cur
	files.cert, files.key, files.ca = next.cert, next.key, next.ca
	if err := files.check(); err != nil {
		return restart, fmt.Errorf("NBD TLS: %w (the running certificates stay in effect)", err)
	}
	cfg, err := files.tlsConfig()
	if err != nil {
		return restart, fmt.Errorf("NBD TLS: %w (the running certificates stay in effect)", err)
	}
	r.nbdTLS.Store(cfg)
	cur.cert, cur.key, cur.ca = next.cert, next.key, next.ca
	r.nbd = cur
	return restart, nil
}

// apply makes the server serve next's access list and exports, and
// reports the settings that need a restart (kept as they run). ctx bounds
// the wait for a removed export's connections to end.
func (r *exportReloader) apply(ctx context.Context, next export.Config, listens []string) (restart []string, err error) {
	cur := r.cfg
	if !slices.Equal(listens, r.listens) {
		restart = append(restart, "listen")
	}
	if next.Name != cur.Name {
		restart = append(restart, "name")
	}
	if next.MaxInflight != cur.MaxInflight {
		restart = append(restart, "max_inflight")
	}
	if next.MaxTransfer != cur.MaxTransfer {
		restart = append(restart, "max_transfer")
	}
	if !sameCrypto(next.Crypto, cur.Crypto) {
		restart = append(restart, "crypto")
	}
	if next.CryptoWorkers != cur.CryptoWorkers {
		restart = append(restart, "crypto_workers")
	}
	var errs []error
	if !sameACL(next.Access, cur.Access) {
		if err := r.srv.SetAccess(next.Access); err != nil {
			errs = append(errs, fmt.Errorf("access list: %w", err))
		} else {
			cur.Access = next.Access
		}
	}
	old := map[string]export.ExportConfig{}
	for _, e := range cur.Exports {
		old[e.Name] = e
	}
	want := map[string]export.ExportConfig{}
	for _, e := range next.Exports {
		want[e.Name] = e
	}
	var kept []export.ExportConfig
	for _, e := range cur.Exports { // removed or changed: remove first
		if w, ok := want[e.Name]; ok && sameExport(w, e) {
			kept = append(kept, e)
			continue
		}
		if err := r.srv.RemoveExport(ctx, e.Name); err != nil {
			errs = append(errs, fmt.Errorf("removing export %q: %w", e.Name, err))
		}
	}
	for _, e := range next.Exports {
		if o, ok := old[e.Name]; ok && sameExport(o, e) {
			continue
		}
		if err := r.srv.AddExport(e); err != nil {
			errs = append(errs, fmt.Errorf("adding export %q: %w", e.Name, err))
			continue
		}
		kept = append(kept, e)
	}
	cur.Exports = kept
	r.cfg = cur
	return restart, errors.Join(errs...)
}

// reloadTimeout bounds a reload's wait for the connections of a removed
// export to end (their in-flight requests finish first).
const reloadTimeout = 30 * time.Second

func sameExport(a, b export.ExportConfig) bool {
	return a.Name == b.Name && a.Path == b.Path && a.ReadOnly == b.ReadOnly && a.Buffered == b.Buffered
}

func sameACL(a, b export.ACL) bool {
	return a.AllowAll == b.AllowAll && slices.Equal(a.Rules, b.Rules)
}

func sameCrypto(a, b crypto.Config) bool {
	if a.Suite != b.Suite || (a.Key == nil) != (b.Key == nil) {
		return false
	}
	return a.Key == nil || subtle.ConstantTimeCompare(a.Key[:], b.Key[:]) == 1
}

// reloadExport is dst export's SIGHUP: re-read --config, apply the same
// flags again, and make the server serve the result (see apply). A file
// that does not load changes nothing.
func reloadExport(c *cli.Context, r *exportReloader) {
	path := c.String("config")
	if path == "" {
		log.Warn("SIGHUP ignored: dst export runs without --config, there is nothing to reload")
		return
	}
	log.Info("SIGHUP: reloading the configuration", zap.String("config", path))
	next, listens, nextNBD, err := exportConfigNBD(c)
	if err != nil {
		log.Error("reload failed: the configuration does not load; the running one stays in effect", zap.Error(err))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	restart, err := r.apply(ctx, next, listens)
	restartNBD, errNBD := r.applyNBD(nextNBD)
	restart = append(restart, restartNBD...)
	err = errors.Join(err, errNBD)
	if len(restart) > 0 {
		log.Warn("reload: these settings changed but need a restart; the running values stay in effect", zap.Strings("settings", restart))
	}
	if err != nil {
		log.Error("reload: partly applied", zap.Error(err))
		return
	}
	names := make([]string, 0, len(r.cfg.Exports))
	for _, e := range r.cfg.Exports {
		names = append(names, e.Name)
	}
	log.Info("configuration reloaded", zap.Strings("exports", names), zap.Int("access_rules", len(r.cfg.Access.Rules)))
}
