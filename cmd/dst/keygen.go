package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// keygenCommand is replaced by the crypto work.
func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "write a new 32-byte key file for --key-file",
		Action: func(c *cli.Context) error {
			return errors.New("keygen is not built yet")
		},
	}
}
