package main

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// log is the process logger; it writes to stderr so that stdout carries
// only results (the device path, tables).
var log = zap.NewNop()

func setupLogging(level, format string) error {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", level)
	}
	var cfg zap.Config
	switch format {
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.DisableStacktrace = true
		cfg.DisableCaller = true
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.DisableStacktrace = true
	default:
		return usagef("--log-format %q: want console or json", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	l, err := cfg.Build()
	if err != nil {
		return fmt.Errorf("logger: %w", err)
	}
	log = l
	return nil
}

func syncLogging() { _ = log.Sync() }
