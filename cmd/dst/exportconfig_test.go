package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
)

// TestExampleConfig loads docs/dst-export.example.toml, so that the
// documented example always loads and says what it says.
func TestExampleConfig(t *testing.T) {
	f, err := loadExportFile("../../docs/dst-export.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if f.name != "storage-1" || f.maxInflight != 1024 || f.maxTransfer != 1<<20 {
		t.Errorf("name %q max_inflight %d max_transfer %d", f.name, f.maxInflight, f.maxTransfer)
	}
	if want := []string{"dst://0.0.0.0:10811", "dst+unix:///run/dst/export.sock"}; !slices.Equal(f.listens, want) {
		t.Errorf("listens %v, want %v", f.listens, want)
	}
	var rules []string
	for _, r := range f.rules {
		rules = append(rules, r.String())
	}
	if got := strings.Join(rules, " "); got != "10.0.0.0/24=rw 10.0.1.0/24=ro fd00:5::/64=rw cert:backup-host=ro" {
		t.Errorf("rules %s", got)
	}
	if f.workers != 0 {
		t.Errorf("crypto_workers %d, want 0", f.workers)
	}
	if f.allowAll != export.Deny || f.crypto != nil {
		t.Errorf("allow_all %v, crypto %v: both are commented out", f.allowAll, f.crypto)
	}
	if got := f.nbd.listenStrings(); !slices.Equal(got, []string{"nbd://0.0.0.0:10809"}) || f.nbd.cert != "" {
		t.Errorf("nbd.listen %v, tls_cert %q", got, f.nbd.cert)
	}
	want := []export.ExportConfig{{Name: "disk0", Path: "/dev/nvme0n1"}, {Name: "images", Path: "/srv/images.img", ReadOnly: true}}
	if !slices.Equal(f.exports, want) {
		t.Errorf("exports %+v, want %+v", f.exports, want)
	}
}

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "export.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigErrors: every mistake is a usage error that names the file,
// the line and the key.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	const base = "[access]\nallow = [\"10.0.0.0/8=rw\"]\n\n[[export]]\nname = \"a\"\npath = \"/a\"\n\n"
	tests := []struct {
		name, text, want string
	}{
		{"unknown key", base + "[[export]]\nname = \"b\"\npaht = \"/b\"\n", "export.toml:10: export.paht: unknown key"},
		{"unknown top-level key", "nmae = \"x\"\n" + base, "export.toml:1: nmae: unknown key"},
		{"missing path", base + "[[export]]\nname = \"b\"\n", "export.toml:8: export[2].path: missing"},
		{"duplicate export", base + "[[export]]\nname = \"a\"\npath = \"/b\"\n", "export.toml:9: export[2].name: export \"a\" is given twice"},
		{"bad export name", base + "[[export]]\nname = \"a/b\"\npath = \"/b\"\n", "export.toml:9: export[2].name: bad export name"},
		{"bad rule", "[access]\nallow = [\"10.0.0.0/8=rw\",\n  \"10.0.0.300/8=rw\"]\n[[export]]\nname = \"a\"\npath = \"/a\"\n", "export.toml:2: access.allow[1]:"},
		{"bad allow_all", base + "[access]\n", "export.toml:8:"}, // a table defined twice: a TOML error, with its line
		{"allow_all value", "[access]\nallow_all = \"all\"\n[[export]]\nname = \"a\"\npath = \"/a\"\n", "export.toml:2: access.allow_all: access right \"all\""},
		{"max_inflight", "max_inflight = 0\n" + base, "export.toml:1: max_inflight: 0 out of range"},
		{"crypto_workers", "crypto_workers = 257\n" + base, "export.toml:1: crypto_workers: 257 out of range: need 0..256"},
		{"max_transfer", "max_transfer = \"3000\"\n" + base, "export.toml:1: max_transfer: 3000: need a multiple of 512"},
		{"listen with export", "listen = [\"dst://127.0.0.1:1/disk\"]\n" + base, "export.toml:1: listen[0]: dst://127.0.0.1:1/disk: a listen URL names no export"},
		{"bad listen", "listen = [\"ftp://x\"]\n" + base, "export.toml:1: listen[0]:"},
		{"type mismatch", base + "[[export]]\nname = \"b\"\npath = \"/b\"\nro = \"yes\"\n", "export.toml: line 11"},
		{"syntax", "name = \"x\n" + base, "export.toml:1:"},
		{"cipher without key", base + "[crypto]\ncipher = \"aes-256-gcm\"\n", "export.toml:9: crypto.key_file: required with cipher"},
		{"checksum and cipher", base + "[crypto]\nchecksum = \"crc32c\"\ncipher = \"aes-256-gcm\"\n", "export.toml:8: crypto:"},
		{"nbd listen", base + "[nbd]\nlisten = [\"dst://127.0.0.1:1\"]\n", "export.toml:9: nbd.listen[0]:"},
		{"nbd cert without key", base + "[nbd]\ntls_cert = \"/x.pem\"\n", "export.toml:8: nbd: --nbd-tls-cert and --nbd-tls-key"},
		{"nbd client cert without ca", base + "[nbd]\ntls_cert = \"/x.pem\"\ntls_key = \"/y.pem\"\ntls_require_client_cert = true\n", "needs --nbd-tls-ca"},
		{"nbd cert unreadable", base + "[nbd]\ntls_cert = \"/nonexistent/x.pem\"\ntls_key = \"/nonexistent/y.pem\"\n", "export.toml:9: nbd:"},
		{"bad cert rule", "[access]\nallow = [\"cert:=rw\"]\n[[export]]\nname = \"a\"\npath = \"/a\"\n", "access.allow[0]: access rule \"cert:=rw\""},
		{"key file missing", base + "[crypto]\ncipher = \"aes-256-gcm\"\nkey_file = \"/nonexistent/psk\"\n", "export.toml:10: crypto.key_file:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeConfig(t, dir, tt.text)
			_, err := loadExportFile(p)
			var ue usageError
			if err == nil || !errors.As(err, &ue) {
				t.Fatalf("got %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
	if _, err := loadExportFile(filepath.Join(dir, "none.toml")); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("missing file: %v", err)
	}
}

// exportConfigOf runs `dst export ARGS` up to the configuration (nothing
// is opened or served) and returns what it would serve.
func exportConfigOf(t *testing.T, args ...string) (export.Config, []string, error) {
	t.Helper()
	var (
		cfg     export.Config
		listens []string
		err     error
	)
	app := newApp()
	for _, c := range app.Commands {
		if c.Name == "export" {
			c.Action = func(c *cli.Context) error {
				cfg, listens, err = exportConfig(c)
				return nil
			}
		}
	}
	if rerr := app.Run(append([]string{"dst", "export"}, args...)); rerr != nil {
		return cfg, nil, rerr
	}
	return cfg, listens, err
}

// TestConfigAndFlags: the flags add to the file's lists and override its
// single values.
func TestConfigAndFlags(t *testing.T) {
	dir := t.TempDir()
	p := writeConfig(t, dir, `name = "from-file"
listen = ["dst://127.0.0.1:10811"]
max_inflight = 64
max_transfer = "256KiB"
[access]
allow = ["10.0.0.0/8=rw"]
allow_all = "ro"
[crypto]
checksum = "crc32c"
[[export]]
name = "a"
path = "/a"
`)
	cfg, listens, err := exportConfigOf(t, "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "from-file" || cfg.MaxInflight != 64 || cfg.MaxTransfer != 256<<10 ||
		cfg.Access.AllowAll != export.ReadOnly || cfg.Crypto.Suite != crypto.CRC32C ||
		len(cfg.Exports) != 1 || !slices.Equal(listens, []string{"dst://127.0.0.1:10811"}) {
		t.Fatalf("from the file alone: %+v, listens %v", cfg, listens)
	}

	cfg, listens, err = exportConfigOf(t, "--config", p, "--export", "b=/b,ro", "--allow", "192.168.0.0/16=ro",
		"--listen", "dst://127.0.0.1:10812", "--name", "from-flag", "--max-inflight", "32", "--allow-all", "rw", "--checksum", "sha256")
	if err != nil {
		t.Fatal(err)
	}
	var names, rules []string
	for _, e := range cfg.Exports {
		names = append(names, e.Name)
	}
	for _, r := range cfg.Access.Rules {
		rules = append(rules, r.String())
	}
	if got := strings.Join(names, ","); got != "a,b" {
		t.Errorf("exports %s, want a,b (the file's, then the flags')", got)
	}
	if got := strings.Join(rules, " "); got != "10.0.0.0/8=rw 192.168.0.0/16=ro" {
		t.Errorf("rules %s", got)
	}
	if !slices.Equal(listens, []string{"dst://127.0.0.1:10811", "dst://127.0.0.1:10812"}) {
		t.Errorf("listens %v", listens)
	}
	if cfg.Name != "from-flag" || cfg.MaxInflight != 32 || cfg.MaxTransfer != 256<<10 ||
		cfg.Access.AllowAll != export.ReadWrite || cfg.Crypto.Suite != crypto.SHA256 {
		t.Errorf("overrides: name %q max_inflight %d max_transfer %d allow_all %v suite %v",
			cfg.Name, cfg.MaxInflight, cfg.MaxTransfer, cfg.Access.AllowAll, cfg.Crypto.Suite)
	}

	_, _, err = exportConfigOf(t, "--config", p, "--export", "a=/other")
	if err == nil || !strings.Contains(err.Error(), `export "a" is also in`) {
		t.Errorf("an export in both: %v", err)
	}
	_, _, err = exportConfigOf(t, "--config", p, "--listen", "dst://127.0.0.1:10811")
	if err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("a listener in both: %v", err)
	}
}

// TestReloadConfig: SIGHUP's work (reloadExport) on a running server,
// with real TCP clients: an export removed, one added, one changed (a
// removal and an addition), the access list replaced; the session of the
// unchanged export goes on; a file that does not load changes nothing;
// settings that need a restart are kept.
func TestReloadConfig(t *testing.T) {
	dir := t.TempDir()
	pa, pb, pc := exporttest.File(t, 1<<20), exporttest.File(t, 1<<20), exporttest.File(t, 1<<20)
	conf := func(extra string) string {
		return "[access]\nallow = [\"127.0.0.1=rw\"]\n" + extra
	}
	p := writeConfig(t, dir, conf("[[export]]\nname = \"a\"\npath = \""+pa+"\"\n[[export]]\nname = \"b\"\npath = \""+pb+"\"\n"))

	var ctxOf *cli.Context
	app := newApp()
	for _, c := range app.Commands {
		if c.Name == "export" {
			c.Action = func(c *cli.Context) error { ctxOf = c; return nil }
		}
	}
	if err := app.Run([]string{"dst", "export", "--config", p}); err != nil {
		t.Fatal(err)
	}
	cfg, listens, err := exportConfig(ctxOf)
	if err != nil {
		t.Fatal(err)
	}
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	r := &exportReloader{srv: srv, cfg: cfg, listens: listens}

	ca := exporttest.Connect(t, addr, "a")
	cb := exporttest.Connect(t, addr, "b")
	data := make([]byte, 4096)
	data[0] = 'A'
	ca.MustDo(wire.Request{Op: wire.OpWrite, ID: 1, Length: 4096}, data, wire.StatusOK)
	cb.MustDo(wire.Request{Op: wire.OpWrite, ID: 1, Length: 4096}, data, wire.StatusOK)

	// b removed, c added, a unchanged; 127.0.0.1 stays rw.
	writeConfig(t, dir, "max_inflight = 8\n"+conf("[[export]]\nname = \"a\"\npath = \""+pa+"\"\n[[export]]\nname = \"c\"\npath = \""+pc+"\"\nro = true\n"))
	reloadExport(ctxOf, r)
	cb.ExpectClosed(5 * time.Second)
	ca.MustDo(wire.Request{Op: wire.OpRead, ID: 2, Length: 4096}, nil, wire.StatusOK) // untouched
	cc := exporttest.Connect(t, addr, "c")
	if !cc.Welcome.ReadOnly {
		t.Fatal("c was added read-only")
	}
	if got := exportNames(srv); got != "a,c" {
		t.Fatalf("exports %s after the reload, want a,c", got)
	}
	if r.cfg.MaxInflight == 8 {
		t.Fatal("max_inflight needs a restart, but the reloader took it")
	}

	// A file that does not load changes nothing.
	writeConfig(t, dir, conf("[[export]]\nname = \"a\"\n"))
	reloadExport(ctxOf, r)
	if got := exportNames(srv); got != "a,c" {
		t.Fatalf("exports %s after a failed reload, want a,c", got)
	}

	// a changes (now read-only: removed and added again), and the
	// access list becomes ro: a's connection is closed either way.
	writeConfig(t, dir, "[access]\nallow = [\"127.0.0.1=ro\"]\n[[export]]\nname = \"a\"\npath = \""+pa+"\"\nro = true\n")
	reloadExport(ctxOf, r)
	ca.ExpectClosed(5 * time.Second)
	cc.ExpectClosed(5 * time.Second) // removed
	ca2 := exporttest.Connect(t, addr, "a")
	if !ca2.Welcome.ReadOnly {
		t.Fatal("a is read-only now")
	}
	if got := ca2.MustDo(wire.Request{Op: wire.OpRead, ID: 1, Length: 4096}, nil, wire.StatusOK); got[0] != 'A' {
		t.Fatal("a does not serve its file after being changed")
	}
	if got := exportNames(srv); got != "a" {
		t.Fatalf("exports %s, want a", got)
	}
	if r.cfg.Access.Rules[0].Access != export.ReadOnly {
		t.Fatal("the reloader does not hold the new access list")
	}
}

func exportNames(srv *export.Server) string {
	var names []string
	for _, e := range srv.Exports() {
		names = append(names, e.Name)
	}
	return strings.Join(names, ",")
}

// TestMain lets a test run the dst command in a child process: the test
// binary itself, with DST_TEST_MAIN=1, is dst.
func TestMain(m *testing.M) {
	if os.Getenv("DST_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestExportSIGHUP: dst export --config in its own process reloads the file
// on SIGHUP (an export added, one removed) and stops cleanly on SIGTERM.
func TestExportSIGHUP(t *testing.T) {
	dir := t.TempDir()
	pa, pb := exporttest.File(t, 1<<20), exporttest.File(t, 1<<20)
	p := writeConfig(t, dir, "[access]\nallow = [\"127.0.0.1=rw\"]\n[[export]]\nname = \"a\"\npath = \""+pa+"\"\n")
	proc := startDst(t, "export", "--config", p, "--listen", "dst://127.0.0.1:0")
	line := proc.line(t)
	addr, ok := strings.CutPrefix(line, "listening ")
	if !ok {
		t.Fatalf("first line %q; stderr:\n%s", line, proc.stderr.String())
	}
	hello := func(name string) error {
		c := exporttest.Dial(t, addr)
		defer c.Close()
		_, err := c.Hello(&wire.Hello{Export: name, Features: exporttest.AllFeatures})
		return err
	}
	if err := hello("a"); err != nil {
		t.Fatal(err)
	}
	if err := hello("b"); err == nil {
		t.Fatal("export b is served before it is in the file")
	}
	writeConfig(t, dir, "[access]\nallow = [\"127.0.0.1=rw\"]\n[[export]]\nname = \"b\"\npath = \""+pb+"\"\n")
	if err := proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for hello("b") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("export b not served after SIGHUP; stderr:\n%s", proc.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var re *wire.RefuseError
	if err := hello("a"); !errors.As(err, &re) || re.Code != wire.RefuseNoSuchExport {
		t.Fatalf("export a after SIGHUP: %v, want NO_SUCH_EXPORT", err)
	}
	proc.stop(t, 20*time.Second)
	if !strings.Contains(proc.stderr.String(), "configuration reloaded") {
		t.Errorf("no reload in the log:\n%s", proc.stderr.String())
	}
}

// TestConfigCryptoWorkers: crypto_workers in the file sets the pool size,
// --crypto-workers overrides it, and either needs a suite.
func TestConfigCryptoWorkers(t *testing.T) {
	dir := t.TempDir()
	const base = "[access]\nallow = [\"10.0.0.0/8=rw\"]\n\n[[export]]\nname = \"a\"\npath = \"/a\"\n\n"
	p := writeConfig(t, dir, "crypto_workers = 3\n"+base+"[crypto]\nchecksum = \"crc32c\"\n")
	for _, tt := range []struct {
		args []string
		want int
	}{
		{nil, 3},
		{[]string{"--crypto-workers", "1"}, 1},
		{[]string{"--crypto-workers", "0"}, 0},
	} {
		cfg, _, err := exportConfigOf(t, append([]string{"--config", p}, tt.args...)...)
		if err != nil || cfg.CryptoWorkers != tt.want {
			t.Errorf("%v: workers %d, %v; want %d", tt.args, cfg.CryptoWorkers, err, tt.want)
		}
	}
	p = writeConfig(t, dir, "crypto_workers = 2\n"+base)
	_, _, err := exportConfigOf(t, "--config", p)
	var ue usageError
	if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "crypto_workers is only used with --checksum or --cipher") {
		t.Errorf("crypto_workers without a suite: %v", err)
	}
}
