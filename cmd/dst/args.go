package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed returns args (os.Args: program, global flags, command,
// subcommands, then the command's flags and arguments) with the command's
// flags moved in front of its arguments. urfave/cli v2 stops reading flags
// at the first argument, so without this `dst recover 5 --wait 30s` or
// `dst attach URL --ro` would treat the flags as arguments, while users of
// nbd-client and most Unix tools expect flags anywhere. "--" ends the
// flags: what follows stays arguments, in order. A flag the command does
// not define is moved too, so that cli reports it by name.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	i := 1
	// Global flags, up to the command's name.
	for i < len(args) && isFlag(args[i]) {
		out = append(out, args[i])
		if takesValue(app.Flags, args[i]) && i+1 < len(args) {
			out = append(out, args[i+1])
			i++
		}
		i++
	}
	cmds := app.Commands
	var cmd *cli.Command
	for i < len(args) {
		c := findCommand(cmds, args[i])
		if c == nil {
			break
		}
		cmd, cmds = c, c.Subcommands
		out = append(out, args[i])
		i++
	}
	if cmd == nil {
		return append(out, args[i:]...)
	}
	var flags, plain []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			plain = append(plain, args[i:]...)
			break
		}
		if !isFlag(a) {
			plain = append(plain, a)
			continue
		}
		flags = append(flags, a)
		if takesValue(cmd.Flags, a) && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	return append(append(out, flags...), plain...)
}

func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' && a != "--" }

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether flag token a (-x, --name) names a flag of
// flags that takes its value from the next token: a flag that is not a
// boolean, written without "=value".
func takesValue(flags []cli.Flag, a string) bool {
	name := strings.TrimLeft(a, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			_, isBool := f.(*cli.BoolFlag)
			return !isBool
		}
	}
	return false
}
