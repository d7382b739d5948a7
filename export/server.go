package export

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/wire"
)

// ErrServerClosed is returned by Serve once Shutdown or Close has begun.
var ErrServerClosed = errors.New("export: server closed")

// Server serves exports to DST clients. Create it with New, give it
// listeners with Serve, stop it with Shutdown (or Close).
type Server struct {
	cfg     Config
	log     *zap.Logger
	acl     atomic.Pointer[aclTable]
	exports map[string]*export
	list    []*export
	bufs    bufPool
	connSeq atomic.Uint64

	mu       sync.Mutex
	conns    map[*conn]struct{}
	nbdConns map[*nbdConn]struct{} // NBD connections in transmission (nbd.go), for SetAccess
	sessions map[wire.Token]*session
	stopping bool
	stopCh   chan struct{} // closed when Shutdown begins
	// wg counts Serve loops, connections and the janitor. Every Add
	// happens under mu while !stopping; Shutdown waits after setting
	// stopping.
	wg          sync.WaitGroup
	janitorWake chan struct{}

	executing atomic.Int64 // ops executing on every connection (tests, logs)
	nbdOpen   atomic.Int64 // NBD connections open, handshaking ones included (metrics)
	hold      atomic.Bool  // tests: park every op before it executes (Hold)

	teardownOnce sync.Once
	teardownErr  error
}

// export is one opened export.
type export struct {
	cfg                ExportConfig
	file               *backend.File
	features           wire.Features // what it can do, RESUME included
	maxTransfer        uint32
	physicalBlock      uint32
	discardGranularity uint32
	// inline: a memory file (backend.InlineCopies): reads, writes and flushes are
	// done by the loops themselves, through mem when it is set.
	inline bool
	mem    *backend.MemFile

	// Metrics (metrics.go), updated by the connections' loops.
	io   metrics.IO
	dups atomic.Uint64 // resends answered without executing again
	// nbdIO counts the NBD requests on this export (nbd.go), from parse
	// to reply; nbdConns its NBD connections in transmission.
	nbdIO    metrics.IO
	nbdConns atomic.Int64

	// Reloads (reload.go), guarded by Server.mu: removed by RemoveExport
	// (no new session attaches); conns: connections attached to a
	// session of this export and not yet ended; closing: the file is
	// being (or has been) synced and closed; closed is closed then.
	removed bool
	conns   int
	closing bool
	closed  chan struct{}
}

// New checks cfg and opens every export (O_DIRECT unless Buffered), so
// that every configuration mistake is reported before anything listens.
func New(cfg Config) (*Server, error) {
	cfg, acl, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		log:         cfg.Log,
		exports:     map[string]*export{},
		conns:       map[*conn]struct{}{},
		sessions:    map[wire.Token]*session{},
		stopCh:      make(chan struct{}),
		janitorWake: make(chan struct{}, 1),
	}
	s.acl.Store(acl)
	for _, ec := range cfg.Exports {
		e, err := s.openExport(ec)
		if err != nil {
			s.closeExports()
			return nil, err
		}
		s.exports[ec.Name] = e
		s.list = append(s.list, e)
	}
	s.wg.Add(1)
	go s.janitor()
	return s, nil
}

func (s *Server) openExport(ec ExportConfig) (*export, error) {
	f, err := backend.Open(ec.Path, backend.Options{ReadOnly: ec.ReadOnly, Buffered: ec.Buffered, Faults: ec.Faults})
	if err != nil {
		return nil, fmt.Errorf("export %q: %w", ec.Name, err)
	}
	lbs := f.LogicalBlockSize()
	e := &export{cfg: ec, file: f, features: wire.FeatResume, closed: make(chan struct{})}
	e.maxTransfer = s.cfg.MaxTransfer / lbs * lbs
	if e.maxTransfer == 0 {
		f.Close()
		return nil, fmt.Errorf("export %q: max transfer %d is smaller than its %d-byte logical block", ec.Name, s.cfg.MaxTransfer, lbs)
	}
	e.physicalBlock = f.PhysicalBlockSize()
	if e.physicalBlock < lbs || bits.OnesCount32(e.physicalBlock) != 1 {
		e.physicalBlock = lbs
	}
	caps := f.Caps()
	if caps.Flush {
		e.features |= wire.FeatFlush
	}
	if caps.FUA {
		e.features |= wire.FeatFUA
	}
	if caps.WriteZeroes {
		e.features |= wire.FeatWriteZeroes
	}
	if caps.Discard {
		e.features |= wire.FeatDiscard
		g := max(caps.DiscardGranularity, lbs)
		e.discardGranularity = (g + lbs - 1) / lbs * lbs
	}
	if e.inline = backend.InlineCopies(f); e.inline {
		e.mem = backend.MapFile(f) // nil if it cannot be mapped: pread and pwrite then
	}
	s.log.Info("export ready", zap.String("export", ec.Name), zap.Stringer("file", f),
		zap.Stringer("features", e.features), zap.Uint32("max_transfer", e.maxTransfer), zap.Bool("memory_file", e.inline))
	return e, nil
}

// closeExports syncs the writable exports and closes them. Every
// connection has ended, and with it every op: no I/O is in flight.
// Exports removed by RemoveExport are not in the list: their last
// connection closed them.
func (s *Server) closeExports() error {
	s.mu.Lock()
	list := s.list
	s.mu.Unlock()
	var errs []error
	for _, e := range list {
		errs = append(errs, e.close())
	}
	return errors.Join(errs...)
}

// close syncs a writable export and closes it; no I/O may be in flight.
func (e *export) close() error {
	var errs []error
	if e.mem != nil {
		e.mem.Unmap()
		e.mem = nil
	}
	if !e.cfg.ReadOnly {
		if err := e.file.Sync(backend.OpFlush, 0, 0, nil, 0); err != nil {
			errs = append(errs, fmt.Errorf("export %q: fdatasync: %w", e.cfg.Name, err))
		}
	}
	if err := e.file.Close(); err != nil {
		errs = append(errs, fmt.Errorf("export %q: %w", e.cfg.Name, err))
	}
	close(e.closed)
	return errors.Join(errs...)
}

// Serve accepts connections on l until ctx ends or Shutdown begins, then
// closes l. Several Serve calls may run at once, on different listeners.
// It returns ErrServerClosed after Shutdown, ctx.Err() when ctx ended it,
// or the error that broke the listener.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.serveListener(ctx, l, "listening", s.accept)
}

// serveListener is the accept loop of Serve and ServeNBDWith: it registers
// with the server's wait group (refusing after Shutdown began), closes l
// when ctx ends or Shutdown begins, retries temporary accept errors with a
// backoff, and hands every connection to accept.
func (s *Server) serveListener(ctx context.Context, l net.Listener, what string, accept func(net.Conn)) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	lctx, cancel := context.WithCancel(ctx)
	closed := make(chan struct{})
	go func() { // closes l to end Accept; waited for below
		defer close(closed)
		select {
		case <-lctx.Done():
		case <-s.stopCh:
		}
		l.Close()
	}()
	defer func() {
		cancel()
		<-closed
	}()
	s.log.Info(what, zap.Stringer("addr", l.Addr()))
	backoff := 5 * time.Millisecond
	for {
		nc, err := l.Accept()
		if err != nil {
			select {
			case <-s.stopCh:
				return ErrServerClosed
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if temporaryAcceptError(err) {
				s.log.Warn("accept", zap.Stringer("addr", l.Addr()), zap.Error(err), zap.Duration("retry_in", backoff))
				select {
				case <-time.After(backoff):
				case <-lctx.Done():
				case <-s.stopCh:
				}
				backoff = min(2*backoff, time.Second)
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		backoff = 5 * time.Millisecond
		accept(nc)
	}
}

func temporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// accept applies the access list (refused peers are closed before any
// handshake) and starts the connection's goroutine.
func (s *Server) accept(nc net.Conn) {
	p := peerOf(nc)
	access, rule := s.acl.Load().lookup(p)
	if access == Deny {
		s.log.Warn("connection refused: peer is not on the access list", zap.String("peer", p.desc), zap.String("rule", rule))
		nc.Close()
		return
	}
	c := newConn(s, nc, p)
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.wg.Add(1)
	s.conns[c] = struct{}{}
	_ = nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	s.mu.Unlock()
	c.log.Debug("accepted", zap.String("access", access.String()), zap.String("rule", rule))
	go c.serve()
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	attached := c.sess != nil // counted in its export's conns
	s.mu.Unlock()
	if attached {
		s.unpinExport(c.exp)
	}
}

// attachSession resumes the HELLO's session (same export, RESUME in
// effect) or starts a new one, with c as its current connection.
func (s *Server) attachSession(c *conn, h *wire.Hello) (*session, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, false, ErrServerClosed
	}
	if err := s.stillAllowedLocked(c); err != nil {
		return nil, false, err
	}
	if h.HasSession && c.features&wire.FeatResume != 0 {
		sess := s.sessions[h.Session]
		switch {
		case sess == nil:
			c.log.Info("unknown session token (expired, or another exporter run): starting a new session",
				zap.Stringer("token", h.Session))
		case sess.exp != c.exp:
			c.log.Warn("session token belongs to another export: starting a new session",
				zap.Stringer("token", h.Session), zap.String("token_export", sess.exp.cfg.Name))
		default:
			c.sess = sess
			c.exp.conns++
			old, barrier := sess.attach(c)
			if old != nil {
				c.log.Info("fenced the session's previous connection", zap.Uint64("previous", old.id))
			}
			if barrier > 0 {
				c.log.Info("session resumed with transactions still executing: new requests wait for them",
					zap.Int("executing", barrier))
			}
			return sess, true, nil
		}
	}
	if len(s.sessions) >= s.maxSessions() {
		s.evictOldestLocked()
	}
	sess := &session{srv: s, token: c.newSessionToken(), exp: c.exp, current: c}
	sess.log = s.log.With(zap.String("export", c.exp.cfg.Name), zap.Stringer("session", sess.token))
	s.sessions[sess.token] = sess
	c.sess = sess
	c.exp.conns++
	return sess, false, nil
}

// maxSessionsHeld bounds the sessions held at once: beyond it, starting a
// session forgets the detached session that has waited longest, so that a
// client cycling through connections cannot make the server hold
// unbounded session records for SessionLinger.
const maxSessionsHeld = 4096

func (s *Server) maxSessions() int {
	if s.cfg.maxSessions > 0 {
		return s.cfg.maxSessions
	}
	return maxSessionsHeld
}

// evictOldestLocked forgets the detached session (with nothing executing)
// that was detached first, if there is one. s.mu is held.
func (s *Server) evictOldestLocked() {
	var oldest *session
	var at time.Time
	for _, sess := range s.sessions {
		sess.mu.Lock()
		if sess.current == nil && !sess.gone && sess.executing == 0 && (oldest == nil || sess.detached.Before(at)) {
			oldest, at = sess, sess.detached
		}
		sess.mu.Unlock()
	}
	if oldest == nil {
		return
	}
	oldest.mu.Lock()
	oldest.gone = true
	oldest.mu.Unlock()
	delete(s.sessions, oldest.token)
	oldest.log.Info("session forgotten to make room", zap.Int("sessions", len(s.sessions)))
}

// detach is called when c ends: its session lingers for a resume, or is
// forgotten at once when it cannot be resumed.
func (s *Server) detach(c *conn) {
	sess := c.sess
	if sess == nil || !sess.detach(c) {
		return
	}
	if s.cfg.SessionLinger < 0 || c.features&wire.FeatResume == 0 {
		s.forget(sess, nil, "connection ended and the session cannot be resumed")
		return
	}
	select {
	case s.janitorWake <- struct{}{}:
	default:
	}
}

// forget drops a session if c is its current connection (or, with c nil,
// if it has none).
func (s *Server) forget(sess *session, c *conn, why string) {
	s.mu.Lock()
	sess.mu.Lock()
	if sess.current != c || sess.gone {
		sess.mu.Unlock()
		s.mu.Unlock()
		return
	}
	sess.current = nil
	sess.gone = true
	drop := sess.takeParkedLocked()
	delete(s.sessions, sess.token)
	sess.mu.Unlock()
	s.mu.Unlock()
	sess.log.Info("session forgotten", zap.String("why", why))
	sess.dropParked(drop, c)
}

// janitor drops sessions that stayed detached for SessionLinger (and have
// nothing executing).
func (s *Server) janitor() {
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-s.stopCh:
			return
		case <-s.janitorWake:
		case <-t.C:
		}
		next := s.expireSessions(time.Now())
		t.Reset(next)
	}
}

// expireSessions forgets expired sessions and returns the time until the
// next may expire.
func (s *Server) expireSessions(now time.Time) time.Duration {
	linger := s.cfg.SessionLinger
	next := time.Hour
	s.mu.Lock()
	defer s.mu.Unlock()
	for tok, sess := range s.sessions {
		sess.mu.Lock()
		if sess.current == nil && !sess.gone {
			left := linger - now.Sub(sess.detached)
			switch {
			case left > 0:
				next = min(next, left)
			case sess.executing > 0:
				next = min(next, max(linger/8, 10*time.Millisecond))
			default:
				sess.gone = true
				delete(s.sessions, tok)
				sess.log.Info("session expired", zap.Duration("linger", linger))
			}
		}
		sess.mu.Unlock()
	}
	return next
}

// Shutdown stops the server: it stops accepting (closing the listeners
// given to Serve); tells every connection to stop reading, finishes what
// each has in flight, sends the replies and GOODBYE, and closes it
// (connections still in their handshake get a second to send their HELLO,
// answered BUSY); then it waits for every I/O, fdatasyncs every writable
// export and closes them. If ctx ends first, the remaining connections are
// closed at once (no GOODBYE) and Shutdown still waits for the I/O in
// flight before closing the exports. It returns the sync and close errors.
// It may be called more than once, and after Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginStop()
	done := make(chan struct{})
	go func() { // waited for below in every case
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.abortAll("shutdown: " + context.Cause(ctx).Error())
		<-done
	}
	s.teardownOnce.Do(func() {
		s.teardownErr = s.closeExports()
		s.mu.Lock()
		clear(s.sessions)
		s.mu.Unlock()
		if s.teardownErr != nil {
			s.log.Warn("shutdown", zap.Error(s.teardownErr))
		} else {
			s.log.Info("exporter stopped")
		}
	})
	return s.teardownErr
}

// Close stops the server at once: like Shutdown, without waiting for
// connections to finish or sending GOODBYE.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return s.Shutdown(ctx)
}

func (s *Server) beginStop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	s.stopping = true
	close(s.stopCh)
	for c := range s.conns {
		c.stopReading()
	}
}

func (s *Server) abortAll(why string) {
	s.hold.Store(false) // parked ops must run for the connections to end
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.abort(why)
	}
}
