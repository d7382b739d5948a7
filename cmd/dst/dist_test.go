package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runAttachUnit runs dist/systemd/dst-attach-unit NAME with env, a fake
// dst that prints its arguments, and a fake sysfs in which the devices
// listed exist. It returns the fake dst's output (or the script's error
// output) and whether the script succeeded.
func runAttachUnit(t *testing.T, env []string, devices ...string) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	fake := filepath.Join(dir, "dst")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sys := filepath.Join(dir, "sys")
	if err := os.MkdirAll(filepath.Join(sys, "class", "ublk-char"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		if err := os.WriteFile(filepath.Join(sys, "class", "ublk-char", d), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("../../dist/systemd/dst-attach-unit", "disk0")
	cmd.Env = append([]string{"DST=" + fake, "DST_SYSFS=" + sys, "PATH=/usr/bin:/bin"}, env...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

// TestAttachUnitScript: the start script of dst-attach@.service attaches
// a new device, recovers one that exists (a previous daemon of the unit
// died or left it), and refuses incomplete settings.
func TestAttachUnitScript(t *testing.T) {
	base := []string{"DST_URL=dst://storage-1:10811/disk0", "DST_ID=10"}
	out, ok := runAttachUnit(t, append(base, "DST_OPTIONS=--timeout 5s --retries 5"))
	if want := "attach --recoverable --id 10 --timeout 5s --retries 5 dst://storage-1:10811/disk0"; !ok || out != want {
		t.Errorf("no device: %q (ok %v), want %q", out, ok, want)
	}
	out, ok = runAttachUnit(t, append(base, "DST_KEEP_DEVICE=1"))
	if want := "attach --recoverable --keep-device --id 10 dst://storage-1:10811/disk0"; !ok || out != want {
		t.Errorf("keep device: %q, want %q", out, want)
	}
	out, ok = runAttachUnit(t, base, "ublkc1", "ublkc10")
	if !ok || !strings.HasSuffix(out, "recover 10") || !strings.Contains(out, "exists: recovering it") {
		t.Errorf("device 10 exists: %q (ok %v), want dst recover 10", out, ok)
	}
	out, ok = runAttachUnit(t, base, "ublkc100")
	if !ok || !strings.HasPrefix(out, "attach ") {
		t.Errorf("only device 100 exists: %q, want attach", out)
	}
	for _, env := range [][]string{{"DST_ID=10"}, {"DST_URL=dst://h/e"}, {"DST_URL=dst://h/e", "DST_ID=ten"}} {
		if out, ok := runAttachUnit(t, env); ok || !strings.Contains(out, "/etc/dst/attach/disk0.env") {
			t.Errorf("env %v: %q (ok %v), want a refusal naming the env file", env, out, ok)
		}
	}
}

// TestUnitsVerify: systemd-analyze verify accepts the units, with their
// paths filled in as make install does.
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "dst")
	if err := os.WriteFile(dst, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs("../../dist/systemd")
	if err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer("@SYSCONFDIR@", "/etc", "@BINDIR@", dir, "@LIBEXECDIR@", abs, "@DOCDIR@", dir)
	var units []string
	for src, dstName := range map[string]string{"dst-export.service": "dst-export.service", "dst-attach@.service": "dst-attach@disk0.service"} {
		b, err := os.ReadFile(filepath.Join(abs, src))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, dstName)
		if err := os.WriteFile(p, []byte(r.Replace(string(b))), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, units...)...).CombinedOutput()
	// Only complaints about our units count (the host's own units may
	// have warnings of their own).
	var bad []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir) {
			bad = append(bad, l)
		}
	}
	if err != nil || len(bad) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(bad, "\n"))
	}
}
