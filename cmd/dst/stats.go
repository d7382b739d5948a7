package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dst-dev/dst/internal/monitor"
	"github.com/dst-dev/dst/internal/state"
)

func statsCommand() *cli.Command {
	return &cli.Command{
		Name:      "stats",
		Usage:     "print a device's I/O once per second: IOPS, MB/s, latency, retries, reconnects",
		ArgsUsage: "ID",
		Description: "Reads the metrics of the dst daemon serving device ID (a number or /dev/ublkbN)\n" +
			"from its Unix socket /run/dst/ublkN.metrics (every add, attach and recover daemon\n" +
			"serves one; root only) and prints, every --interval, what happened since the last line:\n" +
			"read and write IOPS and MB/s (10^6 bytes), other requests (flush, discard,\n" +
			"write-zeroes) per second, the mean and p99 latency (the p99 is a histogram bucket's\n" +
			"upper bound), requests in flight and failed; for remote devices also the resends,\n" +
			"timeouts and reconnects of the interval, the reconnects since start, reply frames that\n" +
			"failed their checksum or authentication, and the connection state.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "count", Usage: "print this many lines, then exit (0: until SIGINT)"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "time between lines"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("stats needs a device id (see dst list), e.g. dst stats 0")
			}
			id, err := parseDeviceID(c.Args().First())
			if err != nil {
				return err
			}
			// Flags may also follow the id (dst stats 0 --count 2).
			fs := flag.NewFlagSet("stats", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			count := fs.Int("count", c.Int("count"), "")
			interval := fs.Duration("interval", c.Duration("interval"), "")
			if err := fs.Parse(c.Args().Tail()); err != nil {
				return usagef("stats: %v", err)
			}
			if fs.NArg() > 0 {
				return usagef("stats takes one device id, not %q", strings.Join(c.Args().Slice(), " "))
			}
			if *count < 0 {
				return usagef("--count %d: want 0 (forever) or more", *count)
			}
			if *interval < 10*time.Millisecond {
				return usagef("--interval %s: want at least 10ms", *interval)
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runStats(ctx, os.Stdout, id, *count, *interval)
		},
	}
}

// runStats prints count lines (0: until ctx ends) of device id's rates.
func runStats(ctx context.Context, w io.Writer, id uint32, count int, interval time.Duration) error {
	sock := metricsSocket(id)
	if _, err := os.Stat(sock); err != nil {
		return statsUnavailable(id, sock, err)
	}
	sample := func() (monitor.Sample, error) {
		fams, err := monitor.Fetch(ctx, sock)
		if err != nil {
			return monitor.Sample{}, fmt.Errorf("device %d: %w", id, err)
		}
		s, err := monitor.DeviceSample(fams, time.Now())
		if err != nil {
			return s, fmt.Errorf("device %d: %s: %w", id, sock, err)
		}
		return s, nil
	}
	prev, err := sample()
	if err != nil {
		switch {
		case errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES):
			return fmt.Errorf("%w (the metrics socket is root's: run dst stats as root)", err)
		case errors.Is(err, syscall.ECONNREFUSED):
			// A socket left by a daemon that died.
			return statsUnavailable(id, sock, err)
		}
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 0; count == 0 || n < count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur, err := sample()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fmt.Fprintf(w, "%s ublkb%d  %s\n", cur.At.Format("15:04:05"), id, monitor.Delta(prev, cur))
		prev = cur
	}
	return nil
}

// statsUnavailable explains why device id has no metrics socket.
func statsUnavailable(id uint32, sock string, err error) error {
	rec, rerr := stateDir.Read(id)
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("device %d: %s: %w (run dst stats as root)", id, sock, err)
	case rerr != nil:
		return fmt.Errorf("device %d: no dst daemon serves it (no state record in %s; see dst list)", id, string(stateDir))
	case !state.Alive(rec.PID):
		return fmt.Errorf("device %d: its daemon (pid %d) is not running (dst recover %d serves it again if it is recoverable)", id, rec.PID, id)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("device %d: nothing answers on %s (pid %d): %w", id, sock, rec.PID, err)
	}
	return fmt.Errorf("device %d: daemon pid %d serves no metrics socket %s (started by an older dst?)", id, rec.PID, sock)
}
