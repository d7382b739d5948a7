package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// exportCommand is replaced by the exporter's real command.
func exportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "serve local files and disks to dst clients",
		Action: func(c *cli.Context) error {
			return errors.New("the exporter is not built yet")
		},
	}
}
