package main

// dst recover ID: serve again a recoverable device whose daemon died (or
// left it with --keep-device), from its state record alone.
//
//	lock /run/dst/ublkN.lock     a serving daemon holds it: refuse
//	GET_FEATURES, GET_DEV_INFO   + the record: decideRecover (refusals)
//	target from the record       file reopened / null / exporter dialled,
//	                             queue 0's session resumed, ids of epoch+1
//	GET_PARAMS                   the target must match the device
//	record: epoch+1, written     before any transaction id of the epoch
//	ublk.Recover                 START_USER_RECOVERY (waits for the kernel
//	                             to release the dead daemon's device),
//	                             queues, END_USER_RECOVERY
//	record: pid, start time      then serve like add/attach

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/state"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/txn"
	"github.com/dst-dev/dst/ublk"
)

func recoverCommand() *cli.Command {
	return &cli.Command{
		Name:      "recover",
		Usage:     "serve again a recoverable ublk device whose daemon died or left it (runs in the foreground)",
		ArgsUsage: "ID",
		Description: "Takes over device ID (a number or /dev/ublkbN), created with --recoverable, after\n" +
			"its daemon died (kill -9, a crash) or left it quiesced (--keep-device and SIGTERM): it reads\n" +
			"what to serve from the device's state record under /run/dst, checks the device, reopens\n" +
			"the file or reconnects to the exporter (resuming the queues' sessions while the exporter\n" +
			"still holds them) and hands the device to the new queues. I/O that waited, and I/O the\n" +
			"dead daemon had in flight, is then served. Like add and attach, it prints the device path\n" +
			"once the device serves, and runs until SIGINT/SIGTERM (which removes the device, or\n" +
			"leaves it again with --keep-device).\n\n" +
			"It refuses, changing nothing, a device that is not recoverable, that a running daemon\n" +
			"serves, that is dead, that has no (or a mismatched) state record, or a kernel without\n" +
			"ublk user recovery.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "wait", Value: 30 * time.Second, Usage: "how long to wait for the kernel to release the device from its dead daemon"},
			&cli.BoolFlag{Name: "keep-device", Usage: "on SIGTERM/SIGINT leave the device quiesced again (default: as the record says)"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics on HOST:PORT (default: the record's, from the first daemon's --metrics-listen)"},
			&cli.IntFlag{Name: "crypto-workers", Usage: "as for dst attach: seal large payloads on a pool of up to `N` workers, 0 inline (default: the record's, from dst attach --crypto-workers)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("recover needs exactly one device id (see dst list), e.g. dst recover 0")
			}
			id, err := parseDeviceID(c.Args().First())
			if err != nil {
				return err
			}
			if c.Duration("wait") <= 0 {
				return usagef("--wait must be positive")
			}
			var metricsAddr *string
			if c.IsSet("metrics-listen") {
				if err := checkMetricsAddr(c.String("metrics-listen")); err != nil {
					return err
				}
				v := c.String("metrics-listen")
				metricsAddr = &v
			}
			var workers *int
			if c.IsSet("crypto-workers") {
				// The suite is the record's: checked against it once
				// the record is read (recoverTarget).
				v := c.Int("crypto-workers")
				if v < 0 || v > maxCryptoWorkers {
					return usagef("--crypto-workers %d out of range: need 0..%d (0: inline)", v, maxCryptoWorkers)
				}
				workers = &v
			}
			if err := requireRoot(); err != nil {
				return err
			}
			var keep *bool
			if c.IsSet("keep-device") {
				v := c.Bool("keep-device")
				keep = &v
			}
			return recoverDevice(c.Context, id, c.Duration("wait"), keep, metricsAddr, workers)
		},
	}
}

func parseDeviceID(a string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(a, "/dev/ublkb"), 10, 32)
	if err != nil {
		return 0, usagef("%q is not a device id (a number, or /dev/ublkbN)", a)
	}
	return uint32(n), nil
}

// recoverFacts is what decideRecover looks at: the kernel's view, the
// record, and who else is at the device.
type recoverFacts struct {
	ID            uint32
	Exists        bool
	Info          ublk.DevInfo
	Features      uint64
	FeaturesKnown bool // GET_FEATURES answered (Linux 6.5+)
	Record        *state.Record
	RecordErr     error
	Locked        bool  // a dst daemon holds the device's lock
	Holders       []int // processes with /dev/ublkcN open
}

// decideRecover returns nil if the device may be taken over, or a refusal
// that says why and what to do instead. Pure: every rule is tested.
func decideRecover(f recoverFacts) error {
	id := f.ID
	refuse := func(format string, a ...any) error {
		return &ublk.RefusedError{ID: id, Reason: fmt.Sprintf(format, a...)}
	}
	if f.FeaturesKnown && f.Features&ublk.FlagUserRecovery == 0 {
		return refuse("%v", ublk.ErrNoRecoveryFeature)
	}
	if !f.Exists {
		return refuse("there is no such device (see dst list)")
	}
	owner := f.Info.ServerPID
	if owner <= 0 && f.Record != nil {
		owner = int32(f.Record.PID)
	}
	if f.Locked {
		return refuse("it is served by a running dst daemon (pid %d); stop it first, or leave it with --keep-device and SIGTERM", owner)
	}
	if err := ublk.CheckRecoverable(f.Info); err != nil {
		return err
	}
	if f.Info.State == ublk.StateLive && len(f.Holders) > 0 {
		return refuse("it is live, served by pid %s (its daemon is running); stop that daemon first", joinInts(f.Holders))
	}
	if f.RecordErr != nil || f.Record == nil {
		if f.RecordErr == nil || errors.Is(f.RecordErr, os.ErrNotExist) {
			return refuse("it has no state record (%s): without it dst cannot tell what the device served; remove the device with `dst del %d`", recordPath(id), id)
		}
		return refuse("its state record is unreadable (%v); remove the device with `dst del %d`", f.RecordErr, id)
	}
	r := f.Record
	var bad []string
	if r.ID != id {
		bad = append(bad, fmt.Sprintf("the record is for device %d", r.ID))
	}
	if !r.Recoverable {
		bad = append(bad, "the record says the device is not recoverable")
	}
	if r.Queues != int(f.Info.NrHWQueues) {
		bad = append(bad, fmt.Sprintf("queues: record %d, device %d", r.Queues, f.Info.NrHWQueues))
	}
	if r.Depth != int(f.Info.QueueDepth) {
		bad = append(bad, fmt.Sprintf("depth: record %d, device %d", r.Depth, f.Info.QueueDepth))
	}
	if r.MaxIO != 0 && r.MaxIO != f.Info.MaxIOBufBytes {
		bad = append(bad, fmt.Sprintf("max I/O: record %d, device %d", r.MaxIO, f.Info.MaxIOBufBytes))
	}
	if uc := f.Info.Flags&ublk.FlagUserCopy != 0; r.UserCopy != uc {
		bad = append(bad, fmt.Sprintf("user copy: record %v, device %v", r.UserCopy, uc))
	}
	switch r.Kind {
	case "file":
		if r.Path == "" {
			bad = append(bad, "a file record without a path")
		}
	case "remote":
		if r.URL == "" || r.Remote == nil {
			bad = append(bad, "a remote record without its URL and settings")
		}
	case "null":
		if r.Size == 0 || r.BlockSize == 0 {
			bad = append(bad, "a null record without size and block size")
		}
	default:
		bad = append(bad, fmt.Sprintf("unknown kind %q", r.Kind))
	}
	if r.Epoch >= txn.MaxEpoch {
		bad = append(bad, fmt.Sprintf("epoch %d: the device has been recovered too often to number transactions any more", r.Epoch))
	}
	if len(bad) > 0 {
		return refuse("its state record %s does not match it (%s); remove the device with `dst del %d`", recordPath(id), strings.Join(bad, "; "), id)
	}
	return nil
}

func recordPath(id uint32) string {
	return filepath.Join(string(stateDir), fmt.Sprintf("ublk%d.json", id))
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// recoverDevice takes device id over and serves it until a signal.
func recoverDevice(ctx context.Context, id uint32, wait time.Duration, keep *bool, metricsAddr *string, workers *int) error {
	// A dst daemon serving the device holds this lock for its whole life;
	// holding it here also keeps two recoveries apart.
	unlock, lockErr := stateDir.Lock(id)
	if lockErr == nil {
		defer unlock()
	} else if !errors.Is(lockErr, state.ErrLocked) {
		return lockErr
	}
	ctrl, err := ublk.OpenControl()
	if err != nil {
		return err
	}
	defer ctrl.Close()

	f := recoverFacts{ID: id, Locked: lockErr != nil}
	if feat, err := ctrl.Features(); err == nil {
		f.Features, f.FeaturesKnown = feat, true
	}
	f.Info, err = ctrl.DevInfo(id)
	switch {
	case err == nil:
		f.Exists = true
	case errors.Is(err, syscall.ENODEV):
	default:
		return err
	}
	f.Record, f.RecordErr = stateDir.Read(id)
	for _, pid := range ublk.Holders(id) {
		if pid != os.Getpid() && state.Alive(pid) {
			f.Holders = append(f.Holders, pid)
		}
	}
	if err := decideRecover(f); err != nil {
		return err
	}
	rec := *f.Record
	if keep != nil {
		rec.KeepDevice = *keep
	}
	if metricsAddr != nil {
		rec.MetricsListen = *metricsAddr
	}
	if workers != nil {
		if rec.Remote == nil {
			if *workers > 0 {
				return usagef("--crypto-workers: device %d is not a remote device (dst attach)", id)
			}
		} else {
			rec.Remote.CryptoWorkers = *workers
		}
	}
	epoch := rec.Epoch + 1
	k := newRecordKeeper(rec)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	ml, err := listenMetrics(rec.MetricsListen)
	if err != nil {
		return err
	}
	closeML := func() {
		if ml != nil {
			ml.Close()
		}
	}
	t, pool, err := recoverTarget(ctx, &rec, epoch, k)
	if err != nil {
		closeML()
		return &ublk.RefusedError{ID: id, Reason: err.Error()}
	}
	if pool != nil {
		defer pool.Close() // after the queues are gone
	}
	if _, err := ublk.CheckTarget(ctrl, id, t); err != nil {
		closeML()
		t.Close()
		return err
	}
	// The epoch is on disk before the first transaction of the epoch
	// exists (the queues send nothing before END_USER_RECOVERY).
	k.publish(func(r *state.Record) { r.Epoch = epoch })

	start := time.Now()
	d, err := ublk.Recover(ctx, ctrl, id, t, ublk.RecoverOptions{Wait: wait})
	if err != nil {
		closeML()
		t.Close()
		return err
	}
	defer serveDeviceMetrics(d, t, k.record(), ml)()
	took := time.Since(start)
	k.update(func(r *state.Record) {
		r.PID, r.Started, r.Target = os.Getpid(), time.Now().UTC(), t.Describe()
		r.Recoveries++
	})
	fmt.Println(d.Path())
	rt := d.Recovered()
	log.Info("device recovered", zap.String("path", d.Path()), zap.String("target", t.Describe()),
		zap.Uint16("epoch", epoch), zap.Duration("waited_for_release", rt.Released),
		zap.Duration("start_to_end_recovery", rt.Serving), zap.Duration("took", took))
	err = runDevice(d, k, sigs)
	if rt, ok := t.(*txn.Target); ok {
		st := rt.Stats()
		log.Info("detached", zap.Uint64("requests", st.Completed), zap.Uint64("failed", st.Failed),
			zap.Uint64("resent", st.Resent), zap.Uint64("reconnects", st.Reconnects))
	}
	return err
}

// recoverTarget rebuilds the target a record describes, and for a remote
// device with crypto workers their pool, to be closed after the target.
func recoverTarget(ctx context.Context, r *state.Record, epoch uint16, k *recordKeeper) (ublk.Target, *crypto.Pool, error) {
	switch r.Kind {
	case "null":
		return &ublk.NullTarget{Size: r.Size, BlockSize: r.BlockSize}, nil, nil
	case "file":
		f, err := backend.Open(r.Path, backend.Options{ReadOnly: r.ReadOnly, Buffered: r.Buffered})
		if err != nil {
			return nil, nil, err
		}
		t := ublk.NewFileTarget(f)
		t.ErrorLog = ioErrorLogger(r.Path)
		log.Info("backing file", zap.Stringer("file", t))
		return t, nil, nil
	case "remote":
		timeout, err1 := time.ParseDuration(r.Remote.Timeout)
		ping, err2 := time.ParseDuration(r.Remote.Ping)
		if err := errors.Join(err1, err2); err != nil {
			return nil, nil, fmt.Errorf("state record: %w", err)
		}
		sessions := make([]wire.Token, r.Queues)
		for i, s := range r.Remote.Sessions {
			if i < len(sessions) && s != "" {
				if b, err := hex.DecodeString(s); err == nil && len(b) == len(wire.Token{}) {
					copy(sessions[i][:], b)
				}
			}
		}
		o := remoteOptions(r.URL, timeout, r.Remote.Retries, ping, r.Depth, r.ReadOnly, k)
		suite, err := crypto.SuiteFromFlags(r.Remote.Checksum, r.Remote.Cipher)
		if err != nil {
			return nil, nil, fmt.Errorf("state record: %w", err)
		}
		if o.Crypto, err = loadCrypto(suite, r.Remote.KeyFile); err != nil {
			return nil, nil, fmt.Errorf("state record: %w", err)
		}
		workers := r.Remote.CryptoWorkers
		if workers < 0 || workers > maxCryptoWorkers {
			return nil, nil, fmt.Errorf("state record: crypto_workers %d out of range 0..%d", workers, maxCryptoWorkers)
		}
		if workers > 0 && suite == crypto.None {
			return nil, nil, fmt.Errorf("--crypto-workers %d: the device has no --checksum or --cipher", workers)
		}
		o.FirstID = txn.EpochFirstID(epoch)
		o.Sessions = sessions
		o.CryptoPool = newCryptoPool(workers)
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t, err := txn.DialTarget(dctx, o)
		cancel()
		if err != nil {
			if o.CryptoPool != nil {
				o.CryptoPool.Close()
			}
			return nil, nil, fmt.Errorf("reconnect to %s: %w", r.URL, err)
		}
		if !sessions[0].IsZero() && !t.Resumed() {
			log.Warn("the exporter no longer holds the session of queue 0 (restarted, or past its linger time): requests the dead daemon had in flight may run again (PROTOCOL.md §5.4)",
				zap.String("url", r.URL))
		}
		return t, o.CryptoPool, nil
	}
	return nil, nil, fmt.Errorf("unknown kind %q", r.Kind)
}
