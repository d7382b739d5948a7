package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/backend"
)

// exportFaultFlags are dst export's hidden debugging flags: storage faults
// (backend.Faults) on every export, for the fault-injection tests.
func exportFaultFlags() []cli.Flag {
	return []cli.Flag{
		&cli.GenericFlag{Name: "fault-eio", Value: &multiFlag{}, Hidden: true,
			Usage: "fail `OP[@OFF+LEN]` with EIO at the storage (OP: read, write, flush, discard, write-zeroes, any; repeatable)"},
		&cli.DurationFlag{Name: "fault-latency", Hidden: true, Usage: "add `D` before every storage operation"},
	}
}

// parseEIORule reads OP[@OFF+LEN] (sizes with units).
func parseEIORule(s string) (backend.EIORule, error) {
	var r backend.EIORule
	op, rng, hasRange := strings.Cut(s, "@")
	switch op {
	case "any":
		r.Op = backend.AnyOp
	case "read":
		r.Op = backend.OpRead
	case "write":
		r.Op = backend.OpWrite
	case "flush":
		r.Op = backend.OpFlush
	case "discard":
		r.Op = backend.OpDiscard
	case "write-zeroes":
		r.Op = backend.OpWriteZeroes
	default:
		return r, fmt.Errorf("operation %q: want read, write, flush, discard, write-zeroes or any", op)
	}
	if !hasRange {
		return r, nil
	}
	offS, lenS, ok := strings.Cut(rng, "+")
	if !ok {
		return r, fmt.Errorf("range %q: want OFF+LEN", rng)
	}
	off, err := parseSize(offS)
	if err != nil {
		return r, fmt.Errorf("offset: %w", err)
	}
	n, err := parseSize(lenS)
	if err != nil {
		return r, fmt.Errorf("length: %w", err)
	}
	if n == 0 {
		return r, fmt.Errorf("range %q has length 0", rng)
	}
	if r.Op == backend.OpFlush {
		return r, fmt.Errorf("a flush has no range")
	}
	r.Off, r.Len = off, n
	return r, nil
}

// applyExportFaults puts the --fault-* flags on every export of cfg.
func applyExportFaults(c *cli.Context, cfg *export.Config) error {
	var rules []backend.EIORule
	for _, s := range *c.Generic("fault-eio").(*multiFlag) {
		r, err := parseEIORule(s)
		if err != nil {
			return usagef("--fault-eio %s: %v", s, err)
		}
		rules = append(rules, r)
	}
	lat := c.Duration("fault-latency")
	if lat < 0 {
		return usagef("--fault-latency %v is negative", lat)
	}
	if len(rules) == 0 && lat == 0 {
		return nil
	}
	for i := range cfg.Exports {
		name := cfg.Exports[i].Name
		cfg.Exports[i].Faults = &backend.Faults{EIO: rules, Latency: lat, Log: func(line string) {
			log.Warn("storage fault injected", zap.String("export", name), zap.String("what", line))
		}}
	}
	log.Warn("storage fault injection is on (debugging flags)", zap.Stringers("eio", rules), zap.Duration("latency", lat))
	return nil
}
