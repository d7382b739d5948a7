package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
)

// TestExportNBDListen: dst export with only --nbd-listen (TCP port 0 and a
// Unix socket) prints the bound NBD URLs, serves NBD on both, opens no DST
// listener, and stops cleanly on SIGTERM.
func TestExportNBDListen(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	proc := startDst(t, "export", "--export", "disk="+exporttest.File(t, 1<<20), "--allow", "127.0.0.1=rw",
		"--nbd-listen", "nbd://127.0.0.1:0", "--nbd-listen", "nbd+unix:///?socket="+sock)
	var urls []string
	for range 2 {
		line := proc.line(t)
		u, ok := strings.CutPrefix(line, "listening ")
		if !ok {
			t.Fatalf("line %q; stderr:\n%s", line, proc.stderr.String())
		}
		urls = append(urls, u)
	}
	addr, ok := strings.CutPrefix(urls[0], "nbd://127.0.0.1:")
	if !ok || addr == "0" || urls[1] != "nbd+unix:///?socket="+sock {
		t.Fatalf("listening %q", urls)
	}
	for _, dial := range []func() (net.Conn, error){
		func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+addr) },
		func() (net.Conn, error) { return net.Dial("unix", sock) },
	} {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		info, _, err := nbd.ClientGo(c, nbd.ClientOptions{Export: "disk", BlockSize: true})
		c.Close()
		if err != nil || info.Size != 1<<20 || info.Flags&nbd.FlagReadOnly != 0 {
			t.Fatalf("NBD handshake: %+v, %v", info, err)
		}
	}
	proc.stop(t, 20*time.Second)
	// No DST listener: its log line is "listening" without "(NBD)".
	if strings.Contains(proc.stderr.String(), "\tlistening\t") || strings.Count(proc.stderr.String(), "\tlistening (NBD)\t") != 2 {
		t.Errorf("want exactly the two NBD listeners in the log:\n%s", proc.stderr.String())
	}
}

func TestExportNBDListenBadURL(t *testing.T) {
	for _, u := range []string{"nbd://127.0.0.1:1/disk", "dst://127.0.0.1:1", "nbd+unix:///disk"} {
		err := run("export", "--export", "a=/x", "--allow", "127.0.0.1=rw", "--nbd-listen", u)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--nbd-listen") {
			t.Errorf("--nbd-listen %s: %v, want a usage error", u, err)
		}
	}
}

func TestExportNBDTLSFlags(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"export", "--export", "a=" + exporttest.File(t, 1<<20), "--allow", "127.0.0.1=rw", "--nbd-listen", "nbd://127.0.0.1:0"}
	for _, tc := range []struct {
		args  []string
		want  string
		usage bool
	}{
		{[]string{"--nbd-tls-cert", junk}, "go together", true},
		{[]string{"--nbd-tls-require"}, "needs --nbd-tls-cert", true},
		{[]string{"--nbd-tls-cert", junk, "--nbd-tls-key", junk}, "--nbd-tls-cert", false},
	} {
		err := run(append(append([]string{}, base...), tc.args...)...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.As(err, &ue) != tc.usage {
			t.Errorf("%v: %v; want an error mentioning %q (usage error: %v)", tc.args, err, tc.want, tc.usage)
		}
	}
}
