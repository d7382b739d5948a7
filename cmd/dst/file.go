package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

func fileAddCommand() *cli.Command {
	return &cli.Command{
		Name:  "file",
		Usage: "a device backed by a regular file or a block device (O_DIRECT)",
		Action: func(c *cli.Context) error {
			return errors.New("the file target is not built yet")
		},
	}
}
