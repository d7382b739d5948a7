// Command dst creates network block devices: ublk devices served by local
// targets or by remote exporters, and the exporters themselves.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	app := newApp()
	if err := app.Run(interspersed(app, os.Args)); err != nil {
		fmt.Fprintf(os.Stderr, "dst: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks errors in the command line itself (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func newApp() *cli.App {
	app := &cli.App{
		Name:    "dst",
		Usage:   "network block devices on ublk",
		Version: version,
		Description: "dst turns local files, disks and remote exports into /dev/ublkbN block devices.\n" +
			"Devices run in the foreground: the first line on stdout is the device path once it is\n" +
			"ready; SIGINT or SIGTERM removes the device and exits.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "console", Usage: "console or json"},
		},
		Before: func(c *cli.Context) error { return setupLogging(c.String("log-level"), c.String("log-format")) },
		After: func(c *cli.Context) error {
			syncLogging()
			return nil
		},
		Commands: []*cli.Command{
			versionCommand(),
			featuresCommand(),
			addCommand(),
			listCommand(),
			delCommand(),
			exportCommand(),
			attachCommand(),
			keygenCommand(),
			proxyCommand(),
			recoverCommand(),
			statsCommand(),
		},
		// Errors are printed once, by main, without usage noise.
		OnUsageError:    func(c *cli.Context, err error, isSubcommand bool) error { return usageError{err} },
		ExitErrHandler:  func(c *cli.Context, err error) {},
		HideHelpCommand: true,
	}
	// Subcommands do not inherit OnUsageError: without it a bad flag
	// prints the whole help and exits 1.
	var mark func([]*cli.Command)
	mark = func(cmds []*cli.Command) {
		for _, c := range cmds {
			if c.OnUsageError == nil {
				c.OnUsageError = app.OnUsageError
			}
			mark(c.Subcommands)
		}
	}
	mark(app.Commands)
	return app
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			fmt.Printf("dst %s\n", version)
			return nil
		},
	}
}
