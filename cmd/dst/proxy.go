package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// proxyCommand is replaced by the fault-injection work.
func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:  "proxy",
		Usage: "forward connections between a client and an exporter, injecting faults (testing)",
		Action: func(c *cli.Context) error {
			return errors.New("dst proxy is not built yet")
		},
	}
}
