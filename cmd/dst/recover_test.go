package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/dst-dev/dst/internal/state"
	"github.com/dst-dev/dst/txn"
	"github.com/dst-dev/dst/ublk"
)

// TestDecideRecover is the refusal table of dst recover: each case is a
// kernel view, a record and who else holds the device, and the decision.
func TestDecideRecover(t *testing.T) {
	const id = 4
	recFlags := uint64(ublk.FlagUserRecovery | ublk.FlagUserRecoveryReissue | ublk.FlagCmdIoctlEncode)
	info := func(state uint16, flags uint64) ublk.DevInfo {
		return ublk.DevInfo{DevID: id, State: state, Flags: flags, NrHWQueues: 2, QueueDepth: 64, MaxIOBufBytes: 512 << 10, ServerPID: 4242}
	}
	fileRec := func() *state.Record {
		return &state.Record{ID: id, PID: 4242, Kind: "file", Path: "/srv/disk.img", Queues: 2, Depth: 64,
			MaxIO: 512 << 10, Size: 1 << 30, Recoverable: true, Epoch: 2}
	}
	good := func() recoverFacts {
		return recoverFacts{ID: id, Exists: true, Info: info(ublk.StateQuiesced, recFlags),
			Features: recFlags, FeaturesKnown: true, Record: fileRec()}
	}
	tests := []struct {
		name string
		mod  func(*recoverFacts)
		want string // "" = go ahead
	}{
		{"quiesced after a crash", func(f *recoverFacts) {}, ""},
		{"fail-io", func(f *recoverFacts) { f.Info.State = ublk.StateFailIO }, ""},
		{"live, daemon gone, kernel still quiescing", func(f *recoverFacts) { f.Info.State = ublk.StateLive }, ""},
		{"quiesced, the dead daemon's files still closing", func(f *recoverFacts) { f.Holders = []int{4242} }, ""},
		{"kernel older than 6.5 (no GET_FEATURES)", func(f *recoverFacts) { f.FeaturesKnown, f.Features = false, 0 }, ""},
		{"remote record", func(f *recoverFacts) {
			f.Record.Kind, f.Record.Path, f.Record.URL = "remote", "", "dst://h/e"
			f.Record.Remote = &state.Remote{Timeout: "10s", Ping: "2s"}
		}, ""},
		{"null record", func(f *recoverFacts) { f.Record.Kind, f.Record.Path, f.Record.BlockSize = "null", "", 512 }, ""},

		{"kernel without user recovery", func(f *recoverFacts) { f.Features = ublk.FlagCmdIoctlEncode }, "no ublk user recovery"},
		{"no such device", func(f *recoverFacts) { f.Exists, f.Info = false, ublk.DevInfo{} }, "no such device"},
		{"a dst daemon serves it", func(f *recoverFacts) { f.Locked = true; f.Info.State = ublk.StateLive }, "served by a running dst daemon (pid 4242)"},
		{"live and held by its daemon", func(f *recoverFacts) { f.Info.State = ublk.StateLive; f.Holders = []int{4242} }, "served by pid 4242"},
		{"not recoverable", func(f *recoverFacts) { f.Info.Flags = ublk.FlagCmdIoctlEncode }, "without --recoverable"},
		{"not recoverable, suggests dst del", func(f *recoverFacts) { f.Info.Flags = ublk.FlagCmdIoctlEncode }, "dst del 4"},
		{"dead", func(f *recoverFacts) { f.Info.State = ublk.StateDead }, "dead"},
		{"record missing", func(f *recoverFacts) { f.Record, f.RecordErr = nil, fmt.Errorf("open: %w", os.ErrNotExist) }, "has no state record"},
		{"record unreadable", func(f *recoverFacts) { f.Record, f.RecordErr = nil, errors.New("unexpected end of JSON input") }, "unreadable"},
		{"record of another device", func(f *recoverFacts) { f.Record.ID = 5 }, "for device 5"},
		{"record says not recoverable", func(f *recoverFacts) { f.Record.Recoverable = false }, "not recoverable"},
		{"queues differ", func(f *recoverFacts) { f.Record.Queues = 1 }, "queues: record 1, device 2"},
		{"depth differs", func(f *recoverFacts) { f.Record.Depth = 128 }, "depth: record 128, device 64"},
		{"max I/O differs", func(f *recoverFacts) { f.Record.MaxIO = 4096 }, "max I/O"},
		{"user copy differs", func(f *recoverFacts) { f.Record.UserCopy = true }, "user copy"},
		{"file without path", func(f *recoverFacts) { f.Record.Path = "" }, "without a path"},
		{"remote without settings", func(f *recoverFacts) { f.Record.Kind, f.Record.URL = "remote", "dst://h/e" }, "remote record without"},
		{"unknown kind", func(f *recoverFacts) { f.Record.Kind = "nbd" }, `unknown kind "nbd"`},
		{"epochs used up", func(f *recoverFacts) { f.Record.Epoch = txn.MaxEpoch }, "recovered too often"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := good()
			tt.mod(&f)
			err := decideRecover(f)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var re *ublk.RefusedError
			if err == nil || !errors.As(err, &re) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v; want a refusal mentioning %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "cannot recover device 4: ") {
				t.Fatalf("refusal does not name the device: %v", err)
			}
		})
	}
}

func TestRecoverFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"recover"}, "exactly one device id"},
		{[]string{"recover", "1", "2"}, "exactly one device id"},
		{[]string{"recover", "abc"}, "not a device id"},
		{[]string{"recover", "--wait", "0s", "1"}, "--wait must be positive"},
		{[]string{"recover", "--bogus", "1"}, "bogus"},
		{[]string{"add", "null", "--size", "1GiB", "--keep-device"}, "--keep-device needs --recoverable"},
		{[]string{"add", "file", "--path", "/tmp/x", "--keep-device"}, "--keep-device needs --recoverable"},
		{[]string{"attach", "--keep-device", "dst://h/e"}, "--keep-device needs --recoverable"},
	}
	for _, tt := range tests {
		err := run(tt.args...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("dst %s: %v; want a usage error mentioning %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
	if id, err := parseDeviceID("/dev/ublkb12"); err != nil || id != 12 {
		t.Fatalf("parseDeviceID(/dev/ublkb12) = %d, %v", id, err)
	}
}
