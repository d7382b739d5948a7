package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/dst-dev/dst/crypto"
)

// keygenCommand writes a new pre-shared key for --cipher/--key-file.
func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "write a new 32-byte key file for --key-file",
		ArgsUsage: "FILE",
		Description: "keygen creates FILE with mode 0600 and writes 32 bytes from the system's secure\n" +
			"random generator to it, then prints the path. It never overwrites an existing file.\n" +
			"Copy the file to the exporter and the client over a secure channel; both use it with\n" +
			"--cipher aes-256-gcm|chacha20-poly1305 --key-file FILE.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("keygen: give exactly one FILE to create (got %d arguments)", c.NArg())
			}
			path := c.Args().First()
			if err := crypto.WriteKeyFile(path); err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			fmt.Println(path)
			return nil
		},
	}
}
