package monitor

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process
// collectors and cs.
func NewRegistry(cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	all := append([]prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}, cs...)
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return reg, nil
}

// ListenTCP listens on addr (HOST:PORT, for --metrics-listen); errors
// name the address.
func ListenTCP(addr string) (net.Listener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("metrics address %q: want HOST:PORT (e.g. 127.0.0.1:9110 or :9110): %w", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %q: %w", addr, err)
	}
	return l, nil
}

// ListenUnix listens on a Unix socket at path with mode 0600, replacing a
// stale socket (the caller must know that no live process serves it: a
// device daemon holds the device's lock).
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	return l, nil
}

// Server serves /metrics on any number of listeners. It owns one
// goroutine per listener; Close stops them and waits.
type Server struct {
	srv *http.Server
	wg  sync.WaitGroup
}

// NewServer returns a server for reg (nothing listens yet).
func NewServer(reg *prometheus.Registry) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "dst metrics: /metrics")
	})
	return &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}}
}

// Serve serves on l until Close; errors other than the close are given to
// onErr (may be nil).
func (s *Server) Serve(l net.Listener, onErr func(error)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && onErr != nil {
			onErr(fmt.Errorf("metrics on %s: %w", l.Addr(), err))
		}
	}()
}

// Close closes the listeners and the connections and waits for the
// serving goroutines.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.wg.Wait()
	return err
}
