package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/dst-dev/dst/internal/backend"
)

func TestParseEIORule(t *testing.T) {
	good := map[string]backend.EIORule{
		"write@1MiB+4KiB": {Op: backend.OpWrite, Off: 1 << 20, Len: 4096},
		"read@0+512":      {Op: backend.OpRead, Len: 512},
		"flush":           {Op: backend.OpFlush},
		"any":             {Op: backend.AnyOp},
		"write-zeroes":    {Op: backend.OpWriteZeroes},
		"discard@4k+4k":   {Op: backend.OpDiscard, Off: 4096, Len: 4096},
	}
	for in, want := range good {
		if got, err := parseEIORule(in); err != nil || got != want {
			t.Errorf("parseEIORule(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "erase", "write@1MiB", "write@x+4k", "write@0+0", "flush@0+4k", "write@0+4Q"} {
		if r, err := parseEIORule(in); err == nil {
			t.Errorf("parseEIORule(%q) accepted: %+v", in, r)
		}
	}
}

// TestExportFaultFlags: bad --fault-* values are usage errors found before
// any export is opened.
func TestExportFaultFlags(t *testing.T) {
	base := []string{"export", "--export", "a=/nonexistent", "--allow-all=rw"}
	for args, want := range map[string]string{
		"--fault-eio=bogus":     "--fault-eio bogus",
		"--fault-latency=-1s":   "--fault-latency -1s is negative",
		"--fault-eio=flush@0+1": "no range",
	} {
		err := run(append(base, args)...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("dst export %s: %v; want a usage error mentioning %q", args, err, want)
		}
	}
	// Valid flags get as far as opening the export.
	if err := run(append(base, "--fault-eio=write@0+4k", "--fault-latency=1ms")...); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("dst export with valid fault flags: %v; want the missing file reported", err)
	}
}
