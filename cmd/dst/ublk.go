package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/state"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/ublk"
)

var stateDir = state.Dir(envOr("DST_STATE_DIR", state.DefaultDir))

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func featuresCommand() *cli.Command {
	return &cli.Command{
		Name:  "features",
		Usage: "print the ublk features of this kernel",
		Action: func(c *cli.Context) error {
			ctrl, err := ublk.OpenControl()
			if err != nil {
				return err
			}
			defer ctrl.Close()
			f, err := ctrl.Features()
			if err != nil {
				if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
					return fmt.Errorf("%w: this kernel is older than 6.5 and cannot report ublk features", err)
				}
				return err
			}
			fmt.Printf("ublk features %#x\n", f)
			for _, n := range ublk.FeatureNames(f) {
				fmt.Printf("  %s\n", n)
			}
			return nil
		},
	}
}

// deviceFlags are the flags every device-creating command shares.
func deviceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "queues", Aliases: []string{"q"}, Value: ublk.DefaultQueues, Usage: "hardware queues (1..4096)"},
		&cli.IntFlag{Name: "depth", Aliases: []string{"d"}, Value: ublk.DefaultDepth, Usage: "queue depth (1..4096)"},
		&cli.IntFlag{Name: "id", Value: -1, Usage: "device id (default: the kernel picks)"},
		&cli.StringFlag{Name: "max-io", Usage: "largest request size (default 512KiB)"},
		&cli.BoolFlag{Name: "user-copy", Usage: "move data with pread/pwrite on /dev/ublkcN (UBLK_F_USER_COPY)"},
		&cli.BoolFlag{Name: "recoverable", Usage: "keep the device when this daemon dies (I/O waits) until dst recover ID serves it again (UBLK_F_USER_RECOVERY, Linux 6.1+)"},
		&cli.BoolFlag{Name: "keep-device", Usage: "on SIGTERM/SIGINT leave the device quiesced for dst recover (a planned upgrade) instead of removing it; needs --recoverable"},
		metricsListenFlag(),
	}
}

// deviceOptions validates the shared flags before anything is created.
func deviceOptions(c *cli.Context) (ublk.Options, error) {
	o := ublk.Options{
		ID:          c.Int("id"),
		Queues:      c.Int("queues"),
		Depth:       c.Int("depth"),
		UserCopy:    c.Bool("user-copy"),
		Recoverable: c.Bool("recoverable"),
	}
	if err := checkMetricsAddr(c.String("metrics-listen")); err != nil {
		return o, err
	}
	if c.Bool("keep-device") && !o.Recoverable {
		return o, usagef("--keep-device needs --recoverable: only a recoverable device can be left for a new daemon")
	}
	if o.Queues < 1 || o.Queues > ublk.MaxQueues {
		return o, usagef("--queues %d out of range: need 1..%d", o.Queues, ublk.MaxQueues)
	}
	if o.Depth < 1 || o.Depth > ublk.MaxDepth {
		return o, usagef("--depth %d out of range: need 1..%d", o.Depth, ublk.MaxDepth)
	}
	if o.ID < -1 || o.ID >= 1<<20 {
		return o, usagef("--id %d out of range: need 0..1048575", o.ID)
	}
	if s := c.String("max-io"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			return o, usagef("--max-io: %v", err)
		}
		if n < 4096 || n > 32<<20 || n%4096 != 0 {
			return o, usagef("--max-io %s: need a multiple of 4KiB from 4KiB to 32MiB", s)
		}
		o.MaxIOBytes = uint32(n)
	}
	return o, nil
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("not root: creating and removing ublk devices needs root (CAP_SYS_ADMIN); run dst with sudo")
	}
	return nil
}

func addCommand() *cli.Command {
	return &cli.Command{
		Name:  "add",
		Usage: "create a ublk device served by a local target (runs in the foreground)",
		Subcommands: []*cli.Command{
			{
				Name:  "null",
				Usage: "a device that reads zeroes and drops writes (the speed baseline)",
				Flags: append(deviceFlags(),
					&cli.StringFlag{Name: "size", Usage: "device size, e.g. 1GiB (required)"},
					&cli.IntFlag{Name: "bs", Value: 512, Usage: "logical block size: 512 or 4096"},
				),
				Action: func(c *cli.Context) error {
					o, err := deviceOptions(c)
					if err != nil {
						return err
					}
					if c.String("size") == "" {
						return usagef("--size is required, e.g. --size 1GiB")
					}
					size, err := parseSize(c.String("size"))
					if err != nil {
						return usagef("--size: %v", err)
					}
					bs := c.Int("bs")
					if bs != 512 && bs != 4096 {
						return usagef("--bs %d: want 512 or 4096", bs)
					}
					if size == 0 || size%uint64(bs) != 0 {
						return usagef("--size %s is not a positive multiple of the block size %d", c.String("size"), bs)
					}
					t := &ublk.NullTarget{Size: size, BlockSize: uint32(bs)}
					rec := state.Record{Kind: "null", Size: size, BlockSize: uint32(bs)}
					return serveDevice(c.Context, t, o, newRecordKeeper(recordOptions(c, rec)))
				},
			},
			fileAddCommand(),
		},
	}
}

// recordKeeper holds the state record of the device this process serves;
// updates (e.g. the connection state of a remote device) may come from any
// goroutine and are written once the device exists.
type recordKeeper struct {
	mu        sync.Mutex
	rec       state.Record
	published bool
}

func newRecordKeeper(r state.Record) *recordKeeper { return &recordKeeper{rec: r} }

// update changes the record and rewrites it if the device exists.
func (k *recordKeeper) update(f func(*state.Record)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f(&k.rec)
	if k.published {
		if err := stateDir.Write(&k.rec); err != nil {
			log.Debug("state record", zap.Error(err))
		}
	}
}

func (k *recordKeeper) publish(f func(*state.Record)) {
	k.mu.Lock()
	k.published = true
	k.mu.Unlock()
	k.update(f)
}

// recordOptions adds the device options of the command line to a record.
func recordOptions(c *cli.Context, r state.Record) state.Record {
	r.Recoverable = c.Bool("recoverable")
	r.KeepDevice = c.Bool("keep-device")
	r.MetricsListen = c.String("metrics-listen")
	return r
}

// setSession stores queue i's session token in the record.
func (k *recordKeeper) setSession(i int, tok wire.Token) {
	k.update(func(r *state.Record) {
		if r.Remote == nil {
			r.Remote = &state.Remote{}
		}
		for len(r.Remote.Sessions) <= i {
			r.Remote.Sessions = append(r.Remote.Sessions, "")
		}
		r.Remote.Sessions[i] = hex.EncodeToString(tok[:])
	})
}

// serveDevice creates the device, prints its path, and serves until a
// signal or an outside stop; on the way out it removes the device, or
// leaves it for `dst recover` (--keep-device).
func serveDevice(ctx context.Context, t ublk.Target, o ublk.Options, k *recordKeeper) error {
	if err := requireRoot(); err != nil {
		t.Close()
		return err
	}
	ctrl, err := ublk.OpenControl()
	if err != nil {
		t.Close()
		return err
	}
	defer ctrl.Close()

	ml, err := listenMetrics(k.record().MetricsListen)
	if err != nil {
		t.Close()
		return err
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	d, err := ublk.Create(cctx, ctrl, t, o)
	cancel()
	if err != nil {
		if ml != nil {
			ml.Close()
		}
		t.Close()
		if errors.Is(err, ublk.ErrNoRecoveryFeature) {
			return fmt.Errorf("--recoverable: %w", err)
		}
		return fmt.Errorf("create device: %w", err)
	}
	if unlock, err := stateDir.Lock(d.ID()); err == nil {
		defer unlock()
	} else {
		log.Warn("device lock", zap.Uint32("id", d.ID()), zap.Error(err))
	}
	info := d.Info()
	k.publish(func(rec *state.Record) {
		rec.ID, rec.PID, rec.Target = d.ID(), os.Getpid(), t.Describe()
		rec.Queues, rec.Depth, rec.Started = int(info.NrHWQueues), int(info.QueueDepth), time.Now().UTC()
		rec.Size = t.Geometry().Size
		rec.MaxIO = info.MaxIOBufBytes
		rec.UserCopy = info.Flags&ublk.FlagUserCopy != 0
		rec.Recoverable = info.Flags&ublk.FlagUserRecovery != 0
	})
	defer serveDeviceMetrics(d, t, k.record(), ml)()
	fmt.Println(d.Path())
	log.Info("device ready", zap.String("path", d.Path()), zap.String("target", t.Describe()),
		zap.Uint16("queues", info.NrHWQueues), zap.Uint16("depth", info.QueueDepth),
		zap.Uint32("max_io", info.MaxIOBufBytes), zap.String("flags", strings.Join(ublk.FeatureNames(info.Flags), "|")))
	return runDevice(d, k, sigs)
}

// runDevice serves d until a signal or an outside stop. With a signal it
// removes the device, or, if the record says KeepDevice, leaves it
// quiesced for `dst recover`; after an outside stop (dst del) it only
// cleans up.
func runDevice(d *ublk.Device, k *recordKeeper, sigs <-chan os.Signal) error {
	outside := false
	select {
	case s := <-sigs:
		log.Info("stopping device", zap.String("signal", s.String()), zap.String("path", d.Path()))
	case <-d.Done():
		outside = true
		log.Warn("device was stopped from outside (dst del?)", zap.String("path", d.Path()))
	}
	if !outside && k.keepDevice() {
		// The requests the target holds get up to detachDrain to finish;
		// what is left then, and what arrives meanwhile, is reissued to
		// the next daemon by the kernel.
		ctx, cancel := context.WithTimeout(context.Background(), detachDrain)
		defer cancel()
		start := time.Now()
		rep, err := d.Detach(ctx)
		if err != nil {
			return fmt.Errorf("leave device %d: %w", d.ID(), err)
		}
		k.update(func(r *state.Record) {
			if r.Remote == nil {
				return
			}
			r.Conn = "detached"
			if rep.Abandoned == 0 {
				// Every session said goodbye with nothing in flight
				// (DISCONNECT): the exporter has forgotten them, and the
				// next daemon starts new ones.
				r.Remote.Sessions = nil
			}
		})
		log.Info("device left for dst recover (quiesced: I/O waits for the next daemon)", zap.String("path", d.Path()),
			zap.Int("requests_left", rep.Parked+rep.Abandoned), zap.Duration("took", time.Since(start)),
			zap.String("recover", fmt.Sprintf("dst recover %d", d.ID())))
		return nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if err := d.Stop(sctx); err != nil {
		errs = append(errs, fmt.Errorf("stop device %d: %w", d.ID(), err))
	}
	if !outside {
		if err := d.Delete(sctx); err != nil {
			errs = append(errs, fmt.Errorf("delete device %d: %w", d.ID(), err))
		}
	}
	stateDir.Remove(d.ID())
	if len(errs) == 0 {
		log.Info("device removed", zap.Uint32("id", d.ID()))
	}
	return errors.Join(errs...)
}

// detachDrain bounds how long --keep-device waits for the requests the
// target holds.
const detachDrain = 10 * time.Second

// record returns a copy of the record.
func (k *recordKeeper) record() state.Record {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rec
}

func (k *recordKeeper) keepDevice() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rec.KeepDevice
}

type listEntry struct {
	ID      uint32 `json:"id"`
	State   string `json:"state"`
	Queues  int    `json:"queues"`
	Depth   int    `json:"depth"`
	Size    uint64 `json:"size"`
	Target  string `json:"target"`
	URL     string `json:"url,omitempty"`
	Conn    string `json:"conn,omitempty"`
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
	Path    string `json:"path"`
	// Recoverable: the kernel keeps the device when its daemon dies
	// (dst recover).
	Recoverable bool `json:"recoverable"`
	// MetricsListen is the daemon's --metrics-listen address, if any
	// (dst stats ID reads the daemon's Unix socket instead).
	MetricsListen string `json:"metrics_listen,omitempty"`
}

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list ublk devices",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			ctrl, err := ublk.OpenControl()
			if err != nil {
				return err
			}
			defer ctrl.Close()
			ids, err := ublk.Devices()
			if err != nil {
				return fmt.Errorf("list devices: %w", err)
			}
			entries := []listEntry{}
			for _, id := range ids {
				info, err := ctrl.DevInfo(id)
				if err != nil {
					log.Debug("device vanished while listing", zap.Uint32("id", id), zap.Error(err))
					continue
				}
				e := listEntry{ID: id, State: ublk.StateName(info.State), Queues: int(info.NrHWQueues),
					Depth: int(info.QueueDepth), PID: int(info.ServerPID), Path: ublk.BlockPath(id), Target: "?",
					Recoverable: info.Flags&ublk.FlagUserRecovery != 0}
				if size, err := ctrl.Size(id); err == nil {
					e.Size = size
				}
				if r, err := stateDir.Read(id); err == nil {
					e.Target, e.URL, e.Conn, e.MetricsListen = r.Target, r.URL, r.Conn, r.MetricsListen
					if e.PID <= 0 {
						e.PID = r.PID
					}
				}
				e.Running = state.Alive(e.PID)
				entries = append(entries, e)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tPATH\tSTATE\tRECOVERABLE\tQUEUES\tDEPTH\tSIZE\tPID\tTARGET")
			for _, e := range entries {
				pid := strconv.Itoa(e.PID)
				if !e.Running {
					pid += " (dead)"
				}
				target := e.Target
				if e.URL != "" {
					target = e.URL + " [" + e.Conn + "]"
				}
				rec := "no"
				if e.Recoverable {
					rec = "yes"
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", e.ID, e.Path, e.State, rec, e.Queues, e.Depth, formatSize(e.Size), pid, target)
			}
			return w.Flush()
		},
	}
}

func delCommand() *cli.Command {
	return &cli.Command{
		Name:      "del",
		Usage:     "remove ublk devices, also those whose daemon died",
		ArgsUsage: "ID... | --all",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "all", Usage: "remove every ublk device"},
			&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "give up waiting for the kernel after this long"},
		},
		Action: func(c *cli.Context) error {
			var ids []uint32
			if c.Bool("all") {
				if c.NArg() > 0 {
					return usagef("give device ids or --all, not both")
				}
			} else {
				if c.NArg() == 0 {
					return usagef("which device? give an id (see dst list) or --all")
				}
				for _, a := range c.Args().Slice() {
					n, err := strconv.ParseUint(strings.TrimPrefix(a, "/dev/ublkb"), 10, 32)
					if err != nil {
						return usagef("%q is not a device id (a number, or /dev/ublkbN)", a)
					}
					ids = append(ids, uint32(n))
				}
			}
			if err := requireRoot(); err != nil {
				return err
			}
			ctrl, err := ublk.OpenControl()
			if err != nil {
				return err
			}
			defer ctrl.Close()
			if c.Bool("all") {
				if ids, err = ublk.Devices(); err != nil {
					return err
				}
			}
			var errs []error
			for _, id := range ids {
				ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
				err := ublk.Remove(ctx, ctrl, id)
				cancel()
				if err != nil {
					if errors.Is(err, syscall.ENODEV) {
						err = fmt.Errorf("device %d does not exist", id)
					}
					errs = append(errs, err)
					continue
				}
				stateDir.Remove(id)
				os.Remove(metricsSocket(id)) // left by a daemon that died
				fmt.Printf("removed %s\n", ublk.BlockPath(id))
			}
			return errors.Join(errs...)
		},
	}
}
