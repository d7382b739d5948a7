package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/state"
	"github.com/dst-dev/dst/ublk"
)

func fileAddCommand() *cli.Command {
	return &cli.Command{
		Name:  "file",
		Usage: "a device backed by a regular file or a block device (O_DIRECT)",
		Description: "Serves --path through io_uring with O_DIRECT: FLUSH becomes fdatasync, FUA writes\n" +
			"use RWF_DSYNC, DISCARD punches a hole (files) or discards (block devices), WRITE_ZEROES\n" +
			"zeroes the range. The device has the file's size and block size. A file on tmpfs is\n" +
			"mapped and copied instead (io_uring cannot complete its I/O without a thread switch).",
		Flags: append(deviceFlags(),
			&cli.StringFlag{Name: "path", Usage: "backing regular file or block device (required)"},
			&cli.BoolFlag{Name: "ro", Usage: "read-only device; the backing file is opened read-only"},
			&cli.BoolFlag{Name: "buffered", Usage: "go through the backing file's page cache instead of O_DIRECT (for filesystems without O_DIRECT)"},
		),
		// A flag the command does not know is a usage error (exit status 2),
		// without the help text.
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error { return usageError{err} },
		Action: func(c *cli.Context) error {
			o, err := deviceOptions(c)
			if err != nil {
				return err
			}
			if c.NArg() > 0 {
				return usagef("unexpected argument %q: give the backing file with --path", c.Args().First())
			}
			path := c.String("path")
			if path == "" {
				return usagef("--path is required: the backing regular file or block device")
			}
			if abs, err := filepath.Abs(path); err == nil {
				path = abs
			}
			f, err := backend.Open(path, backend.Options{ReadOnly: c.Bool("ro"), Buffered: c.Bool("buffered")})
			if err != nil {
				if os.Geteuid() != 0 && (errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)) {
					return fmt.Errorf("%w (and dst must run as root anyway)", err)
				}
				return err
			}
			t := ublk.NewFileTarget(f)
			log.Info("backing file", zap.Stringer("file", t))
			t.ErrorLog = ioErrorLogger(path)
			opts := []string{"--path=" + path}
			if f.ReadOnly() {
				opts = append(opts, "--ro")
			}
			if f.Buffered() {
				opts = append(opts, "--buffered")
			}
			rec := state.Record{Kind: "file", Path: path, Size: f.Size(), Options: opts, ReadOnly: f.ReadOnly(), Buffered: f.Buffered()}
			return serveDevice(c.Context, t, o, newRecordKeeper(recordOptions(c, rec)))
		},
	}
}

// ioErrorLogger logs failed requests: the first few of every 10 seconds
// in full, then a count of those it left out. A failing disk fails every
// request; the log must not become the bottleneck.
func ioErrorLogger(path string) func(error) {
	const burst, window = 10, 10 * time.Second
	var (
		mu      sync.Mutex
		start   time.Time
		n       int
		dropped int
	)
	return func(err error) {
		mu.Lock()
		now := time.Now()
		if now.Sub(start) >= window {
			if dropped > 0 {
				log.Warn("I/O errors not logged", zap.String("path", path), zap.Int("count", dropped), zap.Duration("within", window))
			}
			start, n, dropped = now, 0, 0
		}
		n++
		if n > burst {
			dropped++
			mu.Unlock()
			return
		}
		mu.Unlock()
		log.Warn("I/O error", zap.Error(err), zap.String("errno", backend.Errno(err).Error()))
	}
}
