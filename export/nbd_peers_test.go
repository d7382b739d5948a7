package export_test

// Tests against the standard NBD peers of Debian (scripts/deps.sh
// installs them): libnbd's nbdinfo and nbdcopy, qemu-io and qemu-img,
// and fio's nbd engine. A test skips, naming the package, only when its
// tool is not installed.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/transport"
)

func needTool(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s is not installed (Debian package %s; scripts/deps.sh installs it)", tool, pkg)
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = t.TempDir() // fio leaves verify state files in its directory
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestNBDPeerNbdinfo: nbdinfo sees the size, flags and block sizes the
// exporter advertises, for a writable and a read-only export, over TCP and
// a Unix socket.
func TestNBDPeerNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo", "libnbd-bin")
	cfg := config(exporttest.File(t, testSize))
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "ro", Path: exporttest.File(t, 1<<20), ReadOnly: true})
	_, addr := startNBD(t, cfg)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	startNBDAt(t, cfg, "nbd+unix:///?socket="+sock)
	for _, tc := range []struct {
		uri      string
		size     int64
		readOnly bool
	}{
		{"nbd://" + addr + "/disk", testSize, false},
		{"nbd://" + addr + "/ro", 1 << 20, true},
		{"nbd+unix:///disk?socket=" + sock, testSize, false},
	} {
		var info struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(runTool(t, "nbdinfo", "--json", tc.uri)), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("%s: nbdinfo --json: %v (%d exports)", tc.uri, err, len(info.Exports))
		}
		e := info.Exports[0]
		num := func(k string) int64 { f, _ := e[k].(float64); return int64(f) }
		flag := func(k string) bool { b, _ := e[k].(bool); return b }
		if num("export-size") != tc.size || flag("is_read_only") != tc.readOnly {
			t.Errorf("%s: size %d read-only %v, want %d %v", tc.uri, num("export-size"), flag("is_read_only"), tc.size, tc.readOnly)
		}
		if lbs := num("block_size_minimum"); lbs != 512 && lbs != 4096 || num("block_size_preferred") < 4096 || num("block_size_maximum") != 1<<20 {
			t.Errorf("%s: block sizes %d/%d/%d", tc.uri, num("block_size_minimum"), num("block_size_preferred"), num("block_size_maximum"))
		}
		for _, k := range []string{"can_multi_conn", "can_cache"} {
			if !flag(k) {
				t.Errorf("%s: %s is false", tc.uri, k)
			}
		}
		for _, k := range []string{"can_flush", "can_fua", "can_zero"} { // a read-only file has nothing to flush
			if flag(k) == tc.readOnly {
				t.Errorf("%s: %s = %v on a read-only=%v export", tc.uri, k, flag(k), tc.readOnly)
			}
		}
	}
	if out := runTool(t, "nbdinfo", "--list", "nbd://"+addr); !strings.Contains(out, `export="disk"`) || !strings.Contains(out, `export="ro"`) {
		t.Errorf("nbdinfo --list:\n%s", out)
	}
}

// startNBDAt is startNBD on a given NBD listen URL.
func startNBDAt(t *testing.T, cfg export.Config, url string) {
	t.Helper()
	u, err := export.ParseNBDListenURL(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log = exporttest.TestLogger(t)
	s, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.ListenURL(context.Background(), u, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeNBD(context.Background(), l) }()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
}

// TestNBDPeerNbdcopy: nbdcopy to the export and back, checksums equal
// (the exported file holds the same bytes).
func TestNBDPeerNbdcopy(t *testing.T) {
	needTool(t, "nbdcopy", "libnbd-bin")
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	data := pattern(testSize, 77)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "nbd://" + addr + "/disk"
	runTool(t, "nbdcopy", "--requests=32", "--connections=2", src, uri)
	runTool(t, "nbdcopy", uri, back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) || sum(fileAt(t, path, 0, testSize)) != sum(data) {
		t.Fatal("checksums differ after nbdcopy to the export and back")
	}
}

// TestNBDPeerQemu: qemu-io write/read patterns (aligned and not) and
// qemu-img compare against a local copy.
func TestNBDPeerQemu(t *testing.T) {
	needTool(t, "qemu-io", "qemu-utils")
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	uri := "nbd://" + addr + "/disk"
	out := runTool(t, "qemu-io", "-f", "raw", uri,
		"-c", "write -P 0xa5 0 64k",
		"-c", "write -P 0x5a 1000 3000", // unaligned: qemu aligns it to the advertised minimum block
		"-c", "write -z 100k 8k",
		"-c", "aio_write -P 0x11 1m 64k", "-c", "aio_write -P 0x22 2m 64k", "-c", "aio_flush",
		"-c", "read -P 0xa5 0 1000", "-c", "read -P 0x5a 1000 3000", "-c", "read -P 0xa5 4000 61536",
		"-c", "read -P 0 100k 8k", "-c", "read -P 0x11 1m 64k", "-c", "read -P 0x22 2m 64k",
		"-c", "flush")
	if strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	want := make([]byte, testSize)
	copy(want, bytes.Repeat([]byte{0xa5}, 64<<10))
	copy(want[1000:], bytes.Repeat([]byte{0x5a}, 3000))
	copy(want[1<<20:], bytes.Repeat([]byte{0x11}, 64<<10))
	copy(want[2<<20:], bytes.Repeat([]byte{0x22}, 64<<10))
	local := filepath.Join(t.TempDir(), "want.img")
	if err := os.WriteFile(local, want, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri, local); !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	if !bytes.Equal(fileAt(t, path, 0, testSize), want) {
		t.Fatal("the exported file differs from what qemu-io wrote")
	}
}

// TestNBDPeerFio: fio's nbd engine, random writes at depth 32 with
// verification, then a verifying read pass.
func TestNBDPeerFio(t *testing.T) {
	needTool(t, "fio", "fio")
	if out, _ := exec.Command("fio", "--enghelp").CombinedOutput(); !strings.Contains(string(out), "nbd") {
		t.Skip("this fio has no nbd engine")
	}
	_, addr := startNBD(t, config(exporttest.File(t, testSize)))
	out := runTool(t, "fio", "--name=verify", "--ioengine=nbd", "--uri=nbd://"+addr+"/disk",
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16m", "--verify=crc32c", "--do_verify=1",
		"--verify_fatal=1", "--verify_state_save=0")
	if !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
		t.Fatalf("fio:\n%s", out)
	}
}
