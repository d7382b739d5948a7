package export

import "time"

// Test hooks, visible to the export_test package only.

// NumConns is the number of connections (handshaking or running).
func (s *Server) NumConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// NumSessions is the number of sessions held (attached or lingering).
func (s *Server) NumSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Hold parks every op dispatched from now on in its connection's loop
// (recorded executing, not yet started), or with on false starts the
// parked ones.
func (s *Server) Hold(on bool) {
	s.hold.Store(on)
	if !on {
		s.mu.Lock()
		for c := range s.conns {
			c.x.kick()
		}
		s.mu.Unlock()
	}
}

// Executing is the number of ops recorded executing and not finished.
func (s *Server) Executing() int64 { return s.executing.Load() }

// Detached is the number of sessions without a connection.
func (s *Server) Detached() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		sess.mu.Lock()
		if sess.current == nil {
			n++
		}
		sess.mu.Unlock()
	}
	return n
}

// MaxSessions sets how many sessions the server holds before it forgets
// detached ones.
func MaxSessions(cfg *Config, n int) { cfg.maxSessions = n }

// IODelay makes every op take at least d (on a sync helper).
func IODelay(cfg *Config, d time.Duration) { cfg.ioDelay = d }

// BeforeDispatch calls fn on the connection's loop before each op is
// dispatched; fn may block the loop.
func BeforeDispatch(cfg *Config, fn func(id uint64)) { cfg.beforeDispatch = fn }

// MemoryFile reports whether the export serves its reads and writes by
// inline copies (a file on a memory filesystem), and through a mapping.
func (s *Server) MemoryFile(name string) (inline, mapped bool) {
	e := s.lookupExport(name)
	return e.inline, e.mem != nil
}
