package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/internal/monitor"
	"github.com/dst-dev/dst/internal/state"
	"github.com/dst-dev/dst/txn"
	"github.com/dst-dev/dst/ublk"
)

// Metrics: every device daemon (add, attach, recover) serves Prometheus
// text on a Unix socket next to its state record, /run/dst/ublkN.metrics
// (0600, root only like the record), which `dst stats` reads; with
// --metrics-listen HOST:PORT also on TCP for a Prometheus server. The
// exporter serves on --metrics-listen only.

func metricsListenFlag() cli.Flag {
	return &cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics on HOST:PORT (http://HOST:PORT/metrics)"}
}

// checkMetricsAddr validates --metrics-listen before anything is created.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return usagef("--metrics-listen %q: want HOST:PORT, e.g. 127.0.0.1:9110 or :9110", addr)
	}
	return nil
}

// listenMetrics binds --metrics-listen (nil without one), before the
// device exists, so that a taken port fails without side effects.
func listenMetrics(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	l, err := monitor.ListenTCP(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	return l, nil
}

// metricsSocket is the Unix socket of device id's daemon.
func metricsSocket(id uint32) string {
	return filepath.Join(string(stateDir), fmt.Sprintf("ublk%d.metrics", id))
}

// serveDeviceMetrics serves d's metrics on its Unix socket and on tcp (if
// not nil) until the returned stop is called. A failure to serve metrics
// is logged, never fatal to the device.
func serveDeviceMetrics(d *ublk.Device, t ublk.Target, rec state.Record, tcp net.Listener) (stop func()) {
	dev := monitor.Device{ID: d.ID(), Kind: rec.Kind, URL: rec.URL, IO: d.IO}
	if dev.URL == "" {
		dev.URL = rec.Path
	}
	if rt, ok := t.(*txn.Target); ok {
		dev.Txn = rt
	}
	reg, err := monitor.NewRegistry(monitor.NewDeviceCollector(dev))
	if err != nil {
		log.Error("metrics", zap.Error(err))
		if tcp != nil {
			tcp.Close()
		}
		return func() {}
	}
	srv := monitor.NewServer(reg)
	onErr := func(err error) { log.Warn("metrics server", zap.Error(err)) }
	sock := metricsSocket(d.ID())
	if err := os.MkdirAll(string(stateDir), 0o755); err != nil {
		log.Warn("metrics socket", zap.Error(err))
	} else if l, err := monitor.ListenUnix(sock); err != nil {
		log.Warn("metrics socket: dst stats will not work for this device", zap.Error(err))
	} else {
		srv.Serve(l, onErr)
		log.Debug("metrics socket", zap.String("path", sock))
	}
	if tcp != nil {
		srv.Serve(tcp, onErr)
		log.Info("serving metrics", zap.String("url", "http://"+tcp.Addr().String()+"/metrics"))
	}
	return func() {
		srv.Close()
		os.Remove(sock)
	}
}

// serveExportMetrics serves an exporter's metrics on l until stop.
func serveExportMetrics(s *export.Server, l net.Listener) (stop func(), err error) {
	reg, err := monitor.NewRegistry(monitor.NewExporterCollector(s))
	if err != nil {
		l.Close()
		return nil, err
	}
	srv := monitor.NewServer(reg)
	srv.Serve(l, func(err error) { log.Warn("metrics server", zap.Error(err)) })
	log.Info("serving metrics", zap.String("url", "http://"+l.Addr().String()+"/metrics"))
	return func() { srv.Close() }, nil
}
